"""A saved KV state is only ever loaded into the model it was saved from."""

from __future__ import annotations

from pathlib import Path

from server.engine.backend import BatchEntry
from server.engine.llama import LlamaBackend, model_identity
from tests.conftest import model_file


def test_files_alike_in_size_and_first_mebibyte_have_different_identities(
    tmp_path: Path,
) -> None:
    # Two fine-tunes of one base model: the same metadata, the same size, other weights.
    head = b"GGUF" + b"\0" * ((1 << 20) - 4)
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    first.write_bytes(head + bytes(range(256)) * 40_000)
    second.write_bytes(head + bytes(reversed(range(256))) * 40_000)
    assert first.stat().st_size == second.stat().st_size
    assert model_identity(first, False) != model_identity(second, False)
    assert model_identity(first, False) == model_identity(first, False)
    assert model_identity(first, False) != model_identity(first, True)
    assert model_identity(first, False, "off") != model_identity(first, False, "on")
    # The cache's element types change the bytes of a saved state.
    off_f16 = model_identity(first, False, "off", "f16", "f16")
    assert off_f16 != model_identity(first, False, "off", "q8_0", "f16")


def test_a_state_restores_where_the_identity_matches_and_the_identity_tells_where_not() -> None:
    """Replicas sharing a state folder may be configured differently. llama.cpp refuses a
    sequence's state in a context with another number of KV streams (slots), so that is part
    of the identity; the context length is not (a state fits wherever its tokens do)."""
    path = model_file("smollm2")
    source = LlamaBackend(path, n_ctx=512, n_slots=2, n_threads=2)
    same_streams = LlamaBackend(path, n_ctx=1024, n_slots=2, n_threads=2)
    other_streams = LlamaBackend(path, n_ctx=512, n_slots=3, n_threads=2)
    try:
        tokens = [(i * 7) % 1000 + 10 for i in range(100)]
        source.decode([BatchEntry(1, t, i, i == 99) for i, t in enumerate(tokens)])
        state = source.save_state(1, lambda size: memoryview(bytearray(size)))
        assert same_streams.identity == source.identity
        assert same_streams.restore_state(0, state)
        assert other_streams.identity != source.identity
        assert not other_streams.restore_state(0, state)  # refused, and nothing broke
    finally:
        for backend in (source, same_streams, other_streams):
            backend.close()
