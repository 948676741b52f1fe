"""A model entry without ``n_ctx`` serves its GGUF's trained context, capped so that the KV
cache of every slot fits ``kv_budget``; ``n_ctx`` still overrides."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from server.app import create_app
from server.models.context import (
    CONTEXT_STEP,
    FALLBACK_TRAINED,
    MIN_CONTEXT,
    choose_context,
    kv_bytes_per_token,
)
from server.models.gguf import read_metadata
from tests.conftest import make_settings, model_file

# SmolLM2-135M's shape, as its GGUF states it.
SMOLLM2: dict[str, Any] = {
    "general.architecture": "llama",
    "llama.context_length": 8192,
    "llama.block_count": 30,
    "llama.embedding_length": 576,
    "llama.attention.head_count": 9,
    "llama.attention.head_count_kv": 3,
}
SMOLLM2_TOKEN = 30 * 3 * 64 * (2 + 2)  # layers * kv heads * head width * (f16 key + value)


def test_a_tokens_kv_cost_follows_the_layers_heads_and_element_types() -> None:
    assert kv_bytes_per_token(SMOLLM2, "f16", "f16") == SMOLLM2_TOKEN == 23_040
    assert kv_bytes_per_token(SMOLLM2, "q8_0", "f16") == 30 * 3 * 64 * (34 / 32 + 2)
    # Gemma 3 states its key and value widths (256), wider than embedding / heads (160).
    gemma = {
        "general.architecture": "gemma3",
        "gemma3.block_count": 18,
        "gemma3.embedding_length": 640,
        "gemma3.attention.head_count": 4,
        "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 256,
        "gemma3.attention.value_length": 256,
    }
    assert kv_bytes_per_token(gemma, "f16", "f16") == 18 * 256 * 4
    assert kv_bytes_per_token({}, "f16", "f16") == 0


def test_the_trained_context_when_it_fits_the_budget() -> None:
    choice = choose_context(SMOLLM2, configured=None, slots=4, budget=1 << 30)
    assert choice.n_ctx == 8192 and choice.trained == 8192
    assert "trained context (8192)" in choice.reason and "755 MB for 4 slots" in choice.reason


def test_capped_to_the_budget_in_whole_steps() -> None:
    budget = 100 * 1000 * 1000
    choice = choose_context(SMOLLM2, configured=None, slots=4, budget=budget)
    fits = budget // (4 * SMOLLM2_TOKEN)  # 1085
    assert choice.n_ctx == fits // CONTEXT_STEP * CONTEXT_STEP == 1024
    assert "capped" in choice.reason and "kv_budget" in choice.reason
    tiny = choose_context(SMOLLM2, configured=None, slots=64, budget=1 << 20)
    assert tiny.n_ctx == MIN_CONTEXT


def test_n_ctx_overrides_and_an_unknown_shape_takes_the_trained_or_a_default() -> None:
    assert choose_context(SMOLLM2, configured=32768, slots=4, budget=1).n_ctx == 32768
    unknown = {"general.architecture": "x", "x.context_length": 2048}
    assert choose_context(unknown, configured=None, slots=4, budget=1).n_ctx == 2048
    assert choose_context({}, configured=None, slots=4, budget=None).n_ctx == FALLBACK_TRAINED


def test_a_served_model_without_n_ctx_gets_what_the_budget_allows() -> None:
    """The real SmolLM2 GGUF, loaded with no n_ctx and a 64 MiB budget for 2 slots."""
    metadata = read_metadata(model_file("smollm2"))
    expected = choose_context(metadata, configured=None, slots=2, budget=64 << 20).n_ctx
    assert MIN_CONTEXT < expected < 8192
    settings = make_settings(
        models=[
            {
                "name": "smollm2",
                "path": str(model_file("smollm2")),
                "slots": 2,
                "threads": 2,
                "kv_budget": "64MiB",
            }
        ]
    )
    with TestClient(create_app(settings)) as client:
        tokenized = client.post("/tokenize", json={"model": "smollm2", "text": "hi"})
        assert tokenized.json()["max_model_len"] == expected
        shown = client.post("/api/show", json={"model": "smollm2"}).json()
        assert shown["model_info"]["llama.context_length"] == expected  # what it serves
