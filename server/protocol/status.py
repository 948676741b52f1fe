"""Wire types of GET /status, Hearth's own summary for its web page's status view."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelStatus(BaseModel):
    name: str
    loaded: bool
    remote: bool = False
    slots: int = Field(0, description="Sequences the model runs at once (0: not loaded).")
    slots_busy: int = 0
    queue_depth: int = 0
    prefix_cache_hits: int = Field(0, description="Requests that reused a cached KV prefix.")
    prefix_cache_misses: int = 0
    prompt_tokens: int = Field(0, description="Prompt tokens read since the server started.")
    cached_tokens: int = Field(0, description="Of those, tokens whose KV was reused.")
    completion_tokens: int = Field(0, description="Tokens generated since the server started.")
    flash_attn: str | None = Field(
        None, description="The flash attention the loaded model runs with (on, off or auto)."
    )
    flash_attn_source: str | None = Field(
        None,
        description="Why: configured; gpu (llama.cpp decides per device); measured (at this "
        "load, on this CPU); remembered (measured earlier on this CPU); unmeasured (no "
        "candidate could be timed).",
    )
    layout_rates: dict[str, dict[str, float]] | None = Field(
        None,
        description="Decode tokens/s measured per flash attention candidate and shape "
        "(sequences x context), when measured.",
    )
    speculation: bool | None = Field(
        None, description="Whether prompt-lookup speculation is on for the loaded model."
    )


class KeyUsage(BaseModel):
    name: str
    requests: int = Field(description="Requests since the server started.")
    tokens: int = Field(description="Tokens (prompt and completion) since the server started.")
    tokens_last_minute: int
    running: int


class ServerStatus(BaseModel):
    uptime_seconds: float
    models: list[ModelStatus]
    keys: list[KeyUsage] | None = Field(
        None, description="Per-key usage: only for an admin key, and only when keys are on."
    )
