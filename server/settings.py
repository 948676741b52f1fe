"""All settings, in one pydantic-settings tree, loaded in exactly one place.

Precedence, highest first: command-line options, ``HEARTH_*`` environment variables, the TOML
config file (``config/models.toml`` by default), the defaults written here. Every field carries
its description; docs/configuration.md's settings table is written from these.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, ByteSize, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from server.models.config import ModelConfig

DEFAULT_CONFIG_PATH = Path("config/models.toml")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _default_models_dir() -> Path:
    return Path.home() / ".cache" / "hearth" / "models"


def _default_kv_dir() -> Path:
    return Path.home() / ".cache" / "hearth" / "kv"


def _default_layout_memory() -> Path:
    return Path.home() / ".cache" / "hearth" / "layouts.json"


def _default_responses_db() -> Path:
    return Path.home() / ".cache" / "hearth" / "responses.sqlite3"


class Settings(BaseSettings):
    """The server's settings. ``models`` comes from the config file only."""

    model_config = SettingsConfigDict(env_prefix="HEARTH_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    ollama_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also serve on this port (Ollama's is 11434), for clients that assume "
        "Ollama's address; the same app, on the same host. Unset: only `port`.",
    )
    keep_billing_header: bool = Field(
        False,
        description="Keep the `x-anthropic-billing-header:` line Claude Code puts at the start "
        "of its system prompt. It changes with every prompt, so it is stripped by default: "
        "kept, no conversation's prefix is ever reused from the KV cache.",
    )
    models_dir: Path = Field(
        default_factory=_default_models_dir, description="Where pulled models are stored."
    )
    hf_token: str | None = Field(
        None,
        validation_alias=AliasChoices("hf_token", "HEARTH_HF_TOKEN", "HF_TOKEN"),
        description="Hugging Face token, for pulling gated and private repos (env HF_TOKEN too).",
    )
    ollama_registry: str = Field(
        "https://registry.ollama.ai",
        description="Ollama's registry, for `ollama:name:tag` (and `name:tag`) pulls: a "
        "mirror's address instead.",
    )
    hf_endpoint: str = Field(
        "https://huggingface.co",
        validation_alias=AliasChoices("hf_endpoint", "HEARTH_HF_ENDPOINT", "HF_ENDPOINT"),
        description="The Hugging Face hub to pull from: a mirror's address instead (env "
        "HF_ENDPOINT too).",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a request's headers (from connecting, or "
        "from the end of the previous response on a kept-alive connection); then it is "
        "disconnected.",
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a client has to send a request's body, from the end of its "
        "headers; then it is disconnected.",
    )
    max_connections: int = Field(
        512, ge=1, description="Open connections at most; beyond, new ones are closed at once."
    )
    allowed_hosts: Annotated[list[str], NoDecode] | None = Field(
        None,
        description="Host header values the server answers to (a name, or `*` for any); "
        "others get 400. Unset: the loopback names (localhost, 127.0.0.1, ::1) when `host` is "
        "a loopback address, so that a web page cannot reach a local server through DNS "
        "rebinding; any host otherwise.",
    )
    max_body_bytes: ByteSize = Field(
        ByteSize(8 * 1024 * 1024), ge=1024, description="Largest request body (413 above)."
    )
    max_upload_bytes: ByteSize = Field(
        ByteSize(256 << 30),
        ge=1024,
        description="Largest model blob an admin may upload (POST /api/blobs/:digest, for "
        "/api/create); its body must keep arriving (`body_timeout` seconds without a byte "
        "ends it).",
    )
    max_queue: int = Field(
        64, ge=1, description="Jobs (choices times prompts) waiting per model before 429."
    )
    max_queue_per_owner: int | None = Field(
        None,
        ge=1,
        description="Most jobs one API key (or `user`, or anonymous request) may have waiting "
        "for a model; unset: half of the model's max_queue.",
    )
    max_messages: int = Field(
        2048, ge=1, description="Most messages (or input items) one request may carry (400 above)."
    )
    max_tools: int = Field(128, ge=1, description="Most tools one request may offer (400 above).")
    prep_threads: int = Field(
        2,
        ge=1,
        description="Threads that render chat templates, tokenize and build grammars, apart from "
        "the event loop; at most max_queue requests wait for them (429 above).",
    )
    queue_timeout: float = Field(
        60.0, gt=0, description="Seconds a request may wait in the queue before 503."
    )
    request_timeout: float | None = Field(
        None, gt=0, description="Seconds a request may take in all before 408; unset: no limit."
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds running requests get to finish after SIGTERM."
    )
    kv_cache_ram_bytes: ByteSize = Field(
        ByteSize(1 << 30),
        ge=0,
        description="RAM for saved KV states, per model; 0 turns the cache off.",
    )
    kv_cache_disk_bytes: ByteSize = Field(
        ByteSize(4 << 30),
        ge=0,
        description="Disk for saved KV states, per model; 0 keeps them in RAM only.",
    )
    max_loaded_bytes: ByteSize | None = Field(
        None,
        ge=1,
        description="Memory budget for loaded models (GGUF plus KV cache, estimated); the "
        "least recently used idle model is unloaded to make room. Unset: no budget.",
    )
    share_prefix_cache: bool = Field(
        False,
        description="With API keys on, let keys reuse each other's cached prompt prefixes "
        "(faster for a trusted team sharing long system prompts; cached_tokens then tells a "
        "key how much of its prompt another key sent before). Off, each key's cache is its own.",
    )
    kv_cache_dir: Path = Field(
        default_factory=_default_kv_dir,
        description="Where saved KV states are written. Replicas of one model may share it "
        "(a volume on one host, a ReadWriteMany volume): each finds the others' states.",
    )
    layout_memory: Path = Field(
        default_factory=_default_layout_memory,
        description="Where the flash attention measured at load for each model, layout and "
        "CPU is remembered, so a machine measures once (a model with `flash_attn` set is "
        "not measured).",
    )
    kv_cache_scan_interval: float = Field(
        1.0,
        ge=0,
        description="Seconds between looks at `kv_cache_dir` for states other servers saved "
        "or removed there; 0: only at load (no other server writes the directory).",
    )
    responses_db: Path = Field(
        default_factory=_default_responses_db,
        description="The SQLite database of stored responses (the Responses API's `store`).",
    )
    responses_max_count: int = Field(
        10_000,
        ge=1,
        description="Stored responses kept at most, shared fairly among API keys: past it, "
        "the oldest go from keys over their share, never from a key within its share.",
    )
    responses_max_age: float = Field(
        30 * 86_400, gt=0, description="Seconds a stored response is kept."
    )
    responses_max_bytes: ByteSize = Field(
        ByteSize(1 << 30),
        ge=1,
        description="Bytes of stored responses kept at most, shared among API keys as "
        "responses_max_count is.",
    )
    slots: int | None = Field(
        None, ge=1, le=64, description="Override every model's `slots` (sequences per batch)."
    )
    ctx: int | None = Field(None, ge=64, description="Override every model's `n_ctx`.")
    max_tokens_cap: int | None = Field(
        None,
        ge=1,
        description="Override every model's `max_tokens_cap` (most tokens one completion may "
        "generate): for agents that ask for tens of thousands of tokens from a small model "
        "that does not stop.",
    )
    web_ui: bool = Field(
        True,
        description="Serve the web page (a chat playground and a status view) at `/`.",
    )
    metrics_compat: Literal["none", "vllm"] = Field(
        "none",
        description="Also export the load signals under vLLM's metric names "
        "(`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`, "
        "`vllm:gpu_cache_usage_perc`, `vllm:cache_config_info`, labelled `model_name`), which "
        "inference routers such as the Gateway API Inference Extension's endpoint picker read "
        "by default.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log verbosity."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or as one JSON object per line."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys (repeat the flag; the env var takes a comma-separated "
        "list). With none here or in api_keys_file, no key is needed.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A TOML file of [[keys]] with a name, `key` or `key_sha256`, and "
        "optional limits (see docs/operations.md).",
    )
    key_requests_per_minute: int | None = Field(
        None, ge=1, description="Default limit for each API key: requests per minute."
    )
    key_tokens_per_minute: int | None = Field(
        None,
        ge=1,
        description="Default limit for each API key: prompt plus completion tokens per minute.",
    )
    key_max_concurrent: int | None = Field(
        None, ge=1, description="Default limit for each API key: requests running at once."
    )
    key_max_tokens: int | None = Field(
        None, ge=1, description="Default cap for each API key on one completion's tokens."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (repeat the flag; `*` for "
        "any). None by default.",
    )
    config_dir: Path = Field(
        Path("."), description="Directory of the config file (set by the loader)."
    )
    models: list[ModelConfig] = Field(default_factory=list, description="The registered models.")

    @field_validator("api_keys", "cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _apply_overrides(self) -> Settings:
        overrides: dict[str, int] = {}
        if self.slots is not None:
            overrides["slots"] = self.slots
        if self.ctx is not None:
            overrides["n_ctx"] = self.ctx
        if self.max_tokens_cap is not None:
            overrides["max_tokens_cap"] = self.max_tokens_cap
        if overrides:
            self.models = [m.model_copy(update=overrides) for m in self.models]
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: dict[str, str] = {}
        for model in self.models:
            for name in model.names:
                if name in seen:
                    raise ValueError(
                        f"model name '{name}' is used by '{seen[name]}' and '{model.name}'"
                    )
                seen[name] = model.name
        return self

    @property
    def effective_allowed_hosts(self) -> frozenset[str]:
        """The Host names answered to (lower case, without port); ``*`` means any."""
        if self.allowed_hosts is not None:
            return frozenset(h.lower() for h in self.allowed_hosts)
        if self.host in LOOPBACK_HOSTS:
            return LOOPBACK_HOSTS
        return frozenset({"*"})

    def resolve_path(self, path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else (self.config_dir / path).resolve()


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML config file, below env vars and CLI options in precedence."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def resolve_config_path(cli_path: Path | None) -> Path | None:
    """The config file to read: the CLI's, else ``HEARTH_CONFIG``, else ``config/models.toml``
    when it exists in the working directory, else none (the built-in default model only)."""
    if cli_path is not None:
        return cli_path
    if env := os.environ.get("HEARTH_CONFIG"):
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


BUILTIN_MODELS: list[dict[str, Any]] = [
    {
        "name": "smollm2",
        "aliases": ["SmolLM2-135M-Instruct"],
        "package": "smollm2",
        "preload": True,
    },
]


def load_settings(config_path: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from the config file, the environment and ``overrides`` (the CLI's
    options; ``None`` values are ignored). The only function that reads any of them."""
    path = resolve_config_path(config_path)
    file_data: dict[str, Any] = {"models": BUILTIN_MODELS}
    if path is not None:
        with path.open("rb") as fh:
            file_data = tomllib.load(fh)
        file_data.setdefault("models", BUILTIN_MODELS)
        file_data["config_dir"] = str(path.resolve().parent)

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, env_settings, _TomlSource(settings_cls, file_data)

    return _Loaded(**{k: v for k, v in overrides.items() if v is not None})
