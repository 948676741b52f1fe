"""What every request passes through first: its id, its API key and limits, its metrics.

Raw ASGI middleware rather than a FastAPI dependency, because it must span the whole response:
a stream's concurrency slot is held, and its latency measured, until its last byte is sent,
long after the route function has returned.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.access import ApiKey
from server.api.errors import error_response, family_of
from server.context import RequestContext
from server.errors import HearthError, InvalidRequestError
from server.logs import key_values, request_id_var
from server.state import AppState

logger = logging.getLogger(__name__)
# One line per request: method, path, status, model, key and time, and what a generation did.
access_logger = logging.getLogger("hearth.access")

REQUEST_ID_HEADER = "x-request-id"
# A client's own id is kept when it looks like one; anything else gets a fresh id.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Routes that answer without an API key: probes, metrics and the API's own description.
# The web page's files too: it asks for the key itself (its data comes from keyed routes).
OPEN_PATHS = frozenset(
    {
        "/health",
        "/ready",
        "/metrics",
        "/docs",
        "/openapi.json",
        "/",
        "/ui/app.js",
        "/ui/markdown.js",
        "/ui/style.css",
    }
)
# Routes that need a key but do not count against its limits: the web page's status view
# polls /status every two seconds, which must not use up a key's requests per minute.
UNMETERED_PATHS = frozenset({"/status"})
# Metrics label routes by these paths only; anything else is "other" (bounded label values).
KNOWN_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/models",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/version",
        "/tokenize",
        "/detokenize",
        "/status",
        *OPEN_PATHS,
    }
)


def presented_key(headers: Headers) -> str | None:
    """``Authorization: Bearer KEY`` (OpenAI's SDKs), or ``api-key``/``x-api-key``."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or headers.get("api-key")


class Gateway:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: AppState | None = getattr(scope["app"].state, "hearth", None)
        headers = Headers(scope=scope)
        client_id = headers.get(REQUEST_ID_HEADER, "")
        request_id = client_id if _CLIENT_ID.match(client_id) else f"req_{uuid.uuid4().hex}"
        token = request_id_var.set(request_id)
        context = RequestContext(request_id)
        scope.setdefault("state", {})["context"] = context
        started = time.monotonic()
        status = 500
        key: ApiKey | None = None
        admitted = False  # counted by the limiter: released when the answer is complete
        released = False

        def release_key() -> None:
            nonlocal released
            if admitted and key is not None and state is not None and not released:
                released = True
                state.limiter.release(key)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                if family_of(scope["path"]) == "anthropic":
                    headers["request-id"] = request_id  # where Anthropic's SDKs read it
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # The answer is complete: a client that reads the last byte and sends its next
                # request at once must find the key's concurrency free again.
                release_key()
            await send(message)

        try:
            if state is not None:
                try:
                    _check_host(headers, state.settings.effective_allowed_hosts)
                    if scope["path"] not in OPEN_PATHS:
                        metered = scope["path"] not in UNMETERED_PATHS
                        key = self._admit(state, headers, metered=metered)
                        admitted = key is not None and metered
                except HearthError as error:
                    state.metrics.rejections.labels(error.code or "rejected").inc()
                    await error_response(error, scope["path"])(scope, receive, send_with_id)
                    return
                context.api_key = key
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.monotonic() - started
            model = context.model
            release_key()
            if state is not None:
                path = scope["path"]
                route = path if path in KNOWN_ROUTES else "other"
                state.metrics.record_request(route, model, status, elapsed)
            _log_access(scope, status, context, elapsed)
            request_id_var.reset(token)

    @staticmethod
    def _admit(state: AppState, headers: Headers, *, metered: bool = True) -> ApiKey | None:
        if not state.keys.enabled:
            return None
        key = state.keys.authenticate(presented_key(headers))
        if metered:
            state.limiter.admit(key)
        return key


def _check_host(headers: Headers, allowed: frozenset[str]) -> None:
    """Refuse a Host (its name, without the port) the server does not answer to. A web page
    that rebinds its own domain to 127.0.0.1 still sends its domain as the Host, so checking
    it keeps such pages away from a server on loopback."""
    if "*" in allowed:
        return
    host = headers.get("host", "").strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host not in allowed:
        raise InvalidRequestError(
            "the Host header names a host this server does not answer to (see the "
            "allowed_hosts setting)",
            code="host_not_allowed",
        )


def _log_access(scope: Scope, status: int, context: RequestContext, elapsed: float) -> None:
    key = context.api_key
    fields: dict[str, object] = {
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "model": context.model or None,
        "key": key.name if key is not None else None,
        "time": round(elapsed, 3),
    }
    if context.record is not None:
        fields.update(context.record.log_fields())
    access_logger.info("%s", key_values(fields), extra={"fields": fields})
