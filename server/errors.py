"""Every error Hearth raises on purpose, and what it means on the wire.

Each class carries the HTTP status and the OpenAI error ``type``/``code``/``param`` it is sent
with. ``server.api.errors`` maps the whole tree to ``{"error": {...}}`` JSON with one handler on
:class:`HearthError`; nothing ever matches on message text.

    HearthError                        500 server_error
    ├── EngineError                    500 code=engine_error (llama.cpp failed mid-generation)
    ├── InvalidRequestError            400 invalid_request_error
    │   ├── ContextLengthExceededError 400 code=context_length_exceeded
    │   ├── ChatTemplateMissingError   400 code=chat_template_missing
    │   ├── ChatTemplateError          400 code=chat_template_error
    │   └── UnsupportedFeatureError    400 code=unsupported_feature
    ├── AuthenticationError            401 code=invalid_api_key
    ├── PermissionDeniedError          403 code=permission_denied (an admin key's route)
    ├── ModelNotFoundError             404 code=model_not_found, param=model
    ├── RequestTimeoutError            408 code=request_timeout
    ├── PayloadTooLargeError           413 code=payload_too_large
    ├── QueueFullError                 429 code=queue_full (Retry-After)
    ├── RateLimitError                 429 code=rate_limit_exceeded (Retry-After)
    ├── UpstreamError                  502 code=upstream_unavailable (a remote model failed)
    ├── ServiceUnavailableError        503 (Retry-After)
    │   ├── ModelUnavailableError      503 code=model_unavailable
    │   ├── QueueTimeoutError          503 code=queue_timeout
    │   └── ShuttingDownError          503 code=shutting_down
    └── ModelSourceError               502 code=model_source_error: a model could not be
        └── ChecksumMismatchError          pulled or verified (the hub, the registry, a URL)
"""

from __future__ import annotations


class HearthError(Exception):
    """Base of every deliberate error. Unexpected exceptions are bugs and become a bare 500."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class EngineError(HearthError):
    """llama.cpp failed while generating (a decode error); the request cannot complete."""

    code = "engine_error"


class InvalidRequestError(HearthError):
    """The request is malformed or asks for something impossible."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    """The prompt (plus at least one generated token) does not fit the model's context.

    ``limit`` is the context in tokens when the prompt itself is too long, and
    ``prompt_tokens`` its length where it was counted: each API family words that in its own
    way (Anthropic's "prompt is too long", Ollama's "the input length exceeds the context
    length"), which agents recognize."""

    code = "context_length_exceeded"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        limit: int | None = None,
        prompt_tokens: int | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.limit = limit
        self.prompt_tokens = prompt_tokens


class ChatTemplateMissingError(InvalidRequestError):
    """A chat request for a model that has no chat template (a base model)."""

    code = "chat_template_missing"


class ChatTemplateError(InvalidRequestError):
    """The model's template refused the conversation (its ``raise_exception``) or failed on it."""

    code = "chat_template_error"


class UnsupportedFeatureError(InvalidRequestError):
    """A known OpenAI field whose feature Hearth does not implement yet."""

    code = "unsupported_feature"


class AuthenticationError(HearthError):
    """No API key, or one that is not valid."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(HearthError):
    """A valid key that may not do this (managing models needs an admin key)."""

    status_code = 403
    error_type = "invalid_request_error"
    code = "permission_denied"


class ModelNotFoundError(HearthError):
    """The requested model name is not registered. Never silently served by another model."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"The model '{name}' does not exist", param="model")


class NotFoundError(HearthError):
    """A stored object (a response) that does not exist, has expired, or is another key's."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class RequestTimeoutError(HearthError):
    """The request ran past the server's request_timeout and was stopped."""

    status_code = 408
    error_type = "timeout_error"
    code = "request_timeout"


class PayloadTooLargeError(HearthError):
    """The request body is larger than the configured limit."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class QueueFullError(HearthError):
    """The model's request queue is full; the client should retry later."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"


class RateLimitError(HearthError):
    """The API key is over one of its limits (requests or tokens per minute, concurrency)."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(HearthError):
    """A remote model's server could not be reached, timed out, or broke off."""

    status_code = 502
    error_type = "server_error"
    code = "upstream_unavailable"


class ServiceUnavailableError(HearthError):
    """The server cannot serve the request now (not ready, overloaded, shutting down)."""

    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"


class ModelUnavailableError(ServiceUnavailableError):
    """The model is registered but cannot be loaded (missing file, corrupt GGUF, ...)."""

    code = "model_unavailable"


class QueueTimeoutError(ServiceUnavailableError):
    """The request waited in the queue longer than queue_timeout."""

    code = "queue_timeout"


class ShuttingDownError(ServiceUnavailableError):
    """The server is stopping and admits no new work."""

    code = "shutting_down"


class ModelSourceError(HearthError):
    """A model could not be fetched, assembled or stored."""

    status_code = 502
    code = "model_source_error"


class ChecksumMismatchError(ModelSourceError):
    """A downloaded or assembled model file does not have the expected sha256."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch for {what}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual
