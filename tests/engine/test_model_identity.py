"""A saved KV state is only ever loaded into the model it was saved from."""

from __future__ import annotations

from pathlib import Path

from server.engine.llama import _model_identity


def test_files_alike_in_size_and_first_mebibyte_have_different_identities(
    tmp_path: Path,
) -> None:
    # Two fine-tunes of one base model: the same metadata, the same size, other weights.
    head = b"GGUF" + b"\0" * ((1 << 20) - 4)
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    first.write_bytes(head + bytes(range(256)) * 40_000)
    second.write_bytes(head + bytes(reversed(range(256))) * 40_000)
    assert first.stat().st_size == second.stat().st_size
    assert _model_identity(first, False) != _model_identity(second, False)
    assert _model_identity(first, False) == _model_identity(first, False)
    assert _model_identity(first, False) != _model_identity(first, True)
    assert _model_identity(first, False, "off") != _model_identity(first, False, "on")
    # The cache's element types change the bytes of a saved state.
    off_f16 = _model_identity(first, False, "off", "f16", "f16")
    assert off_f16 != _model_identity(first, False, "off", "q8_0", "f16")
