"""How long a model's context is when its entry does not say: the GGUF's trained context,
capped so that the KV cache of every slot fits a memory budget.

llama.cpp keeps a key and a value vector per layer for every cell of the KV cache, and Hearth
gives each slot its own ``n_ctx`` cells (engine/llama.py), all allocated when the model loads.
So the cache takes ``slots * n_ctx * bytes_per_token``, where a token costs, per layer, the
width of its keys and of its values (``head_count_kv * key_length``, ``head_count_kv *
value_length``) at the cache's element types. SmolLM2-135M, f16: 30 layers * 192 * 2 * 2 bytes
= 23,040 bytes a token, so its trained 8,192 tokens in 4 slots take 755 MB.

This is what llama-server does with ``-c 0`` (the trained context), with the cap in place of
its fitting to free device memory: the budget is the entry's ``kv_budget``, by default a
quarter of the machine's memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# Bytes per element of each KV cache type (quantized types store blocks of 32).
CACHE_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
    "iq4_nl": 18 / 32,
}
# llama.cpp pads a context to a multiple of 256 cells; a capped one is rounded down to it.
CONTEXT_STEP = 256
MIN_CONTEXT = 512
# The context used when the GGUF does not say what it was trained for.
FALLBACK_TRAINED = 4096


@dataclass(frozen=True)
class ContextChoice:
    """The context a model is served with, and why (logged at load, shown by the CLI)."""

    n_ctx: int
    trained: int | None
    reason: str


def default_budget() -> int:
    """A quarter of the machine's physical memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return max(1 << 30, total // 4)


def trained_context(metadata: dict[str, Any]) -> int | None:
    arch = metadata.get("general.architecture")
    value = metadata.get(f"{arch}.context_length")
    return value if isinstance(value, int) and value > 0 else None


def kv_bytes_per_token(metadata: dict[str, Any], cache_type_k: str, cache_type_v: str) -> int:
    """What one cell of one slot's KV cache costs, over every layer (0 if the GGUF does not
    say enough to tell)."""
    arch = metadata.get("general.architecture")

    def number(key: str) -> int | None:
        value = metadata.get(f"{arch}.{key}")
        return value if isinstance(value, int) and value > 0 else None

    layers, width = number("block_count"), number("embedding_length")
    heads = number("attention.head_count")
    if layers is None or width is None or heads is None:
        return 0
    # Per-layer head counts are arrays, which the metadata reader leaves out: then the widest.
    heads_kv = number("attention.head_count_kv") or heads
    key_length = number("attention.key_length") or width // heads
    value_length = number("attention.value_length") or width // heads
    per_layer = heads_kv * (
        key_length * CACHE_TYPE_BYTES[cache_type_k] + value_length * CACHE_TYPE_BYTES[cache_type_v]
    )
    return int(layers * per_layer)


def choose_context(
    metadata: dict[str, Any],
    *,
    configured: int | None,
    slots: int,
    budget: int | None,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
) -> ContextChoice:
    """The entry's ``n_ctx`` when it sets one; else the trained context within the budget."""
    trained = trained_context(metadata)
    if configured is not None:
        return ContextChoice(configured, trained, "n_ctx as configured")
    wanted = trained or FALLBACK_TRAINED
    budget = budget if budget is not None else default_budget()
    per_token = kv_bytes_per_token(metadata, cache_type_k, cache_type_v)
    what = f"the trained context ({trained})" if trained else f"a default ({wanted})"
    if per_token == 0:
        return ContextChoice(wanted, trained, what)
    fits = budget // (slots * per_token) // CONTEXT_STEP * CONTEXT_STEP
    if fits >= wanted:
        size = slots * wanted * per_token
        return ContextChoice(
            wanted, trained, f"{what}; KV cache {_mb(size)} for {slots} slots, within {_mb(budget)}"
        )
    n_ctx = max(MIN_CONTEXT, fits)
    return ContextChoice(
        n_ctx,
        trained,
        f"{what} capped: {slots} slots of {per_token} bytes a token fit {_mb(budget)} of "
        f"kv_budget at {n_ctx} tokens each",
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"
