"""Whether a batch of one sequence's tokens gets exactly the logits of single tokens: measured
at load (speculation is on by default only where it is). On the x86 CPUs measured (llama.cpp
built for AVX2 alone and for AVX-512) it holds for SmolLM2 with flash attention and a q8_0
cache, and for no layout measured without flash attention; the layouts below are those."""

from __future__ import annotations

import pytest

from server.engine import exactness
from server.engine.llama import LlamaBackend
from server.models.config import ModelConfig
from tests.conftest import model_file


@pytest.mark.parametrize(
    ("flash_attn", "cache_type", "exact"),
    [
        # Without flash attention the scores of several rows and of one row are multiplied
        # by different kernels past a few dozen cells (logits up to about 1 apart). With it,
        # a q8_0 cache treats every row alike. An f16 cache took another path for several
        # rows with llama.cpp's OpenMP threads, and was exact with its own threadpool (AMD
        # EPYC, AVX-512): that one depends on the build, so only its answer is checked.
        ("off", "f16", False),
        ("off", "q8_0", False),
        ("on", "f16", None),
        ("on", "q8_0", True),
    ],
)
def test_the_probe_tells_exact_cache_layouts_from_inexact(
    flash_attn: str, cache_type: str, exact: bool | None
) -> None:
    backend = LlamaBackend(
        model_file("smollm2"),
        n_ctx=512,
        n_slots=2,
        n_threads=2,
        flash_attn=flash_attn,
        cache_type_k=cache_type,
        cache_type_v=cache_type if flash_attn == "on" else "f16",
    )
    try:
        answer = exactness.batch_rows_match_single(backend)
        assert answer is exact if exact is not None else isinstance(answer, bool)
        # The probe leaves no cells behind.
        assert backend.truncate(0, 0) and backend.truncate(1, 0)
    finally:
        backend.close()


def test_a_quantized_value_cache_needs_flash_attention() -> None:
    with pytest.raises(ValueError, match="needs flash_attn"):
        ModelConfig(name="m", path="m.gguf", cache_type_v="q8_0")
    config = ModelConfig(name="m", path="m.gguf", cache_type_v="q8_0", flash_attn="on")
    assert config.cache_type_v == "q8_0"


def test_a_probe_whose_decode_fails_answers_not_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing llama_decode during the check must not fail the model's loading."""
    monkeypatch.setattr(exactness, "_EXACT_BATCHES", {})
    backend = LlamaBackend(
        model_file("smollm2"), n_ctx=512, n_slots=2, n_threads=2, flash_attn="on"
    )

    def fail(entries: object) -> None:
        raise RuntimeError("llama_decode failed with status 1")

    try:
        monkeypatch.setattr(backend, "decode", fail)
        assert exactness.batch_rows_match_single(backend) is False
    finally:
        backend.close()
