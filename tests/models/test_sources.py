"""Pulling models from wheels. The download step is replaced by one that writes small wheels
made here, so these tests need no network; `make test` pulls the real models with the same code."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from server.errors import ChecksumMismatchError, ModelSourceError
from server.models.sources import CATALOG, PackagedModel, pull_local, pull_package, sha256_of

PARTS = [b"GGUF" + b"a" * 3000, b"b" * 2000, b"c" * 1000]
WHOLE = b"".join(PARTS)
WHOLE_SUM = hashlib.sha256(WHOLE).hexdigest()


def split_entry(sha256: str = WHOLE_SUM, sums_file: str | None = None) -> PackagedModel:
    return PackagedModel(
        name="toy",
        filename="toy.gguf",
        wheels=("toy==1", "toy-part1==1", "toy-part2==1", "toy-part3==1"),
        members=tuple(f"toy_part{i}/data/toy.gguf.part{i}" for i in range(3)),
        sha256=sha256,
        sha256_member="toy/data/SHA256SUMS" if sums_file is not None else None,
    )


def fake_download(sums_file: str | None = None, calls: list[list[str]] | None = None):  # type: ignore[no-untyped-def]
    def download(requirements: list[str], dest: Path) -> None:
        if calls is not None:
            calls.append(requirements)
        for i, part in enumerate(PARTS):
            with zipfile.ZipFile(dest / f"toy_part{i}-1-py3-none-any.whl", "w") as zf:
                zf.writestr(f"toy_part{i}/data/toy.gguf.part{i}", part)
        with zipfile.ZipFile(dest / "toy-1-py3-none-any.whl", "w") as zf:
            zf.writestr("toy/__init__.py", "")
            if sums_file is not None:
                zf.writestr("toy/data/SHA256SUMS", sums_file)

    return download


def test_parts_are_assembled_in_order_and_verified(tmp_path: Path) -> None:
    sums = f"{WHOLE_SUM}  toy.gguf\n"
    path, fetched = pull_package(
        split_entry(sums_file=sums), tmp_path, download=fake_download(sums)
    )
    assert fetched
    assert path.read_bytes() == WHOLE
    assert [p.name for p in tmp_path.iterdir()] == ["toy.gguf"]  # no temporary files left


def test_pulling_twice_does_nothing(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    download = fake_download(calls=calls)
    pull_package(split_entry(), tmp_path, download=download)
    mtime = (tmp_path / "toy.gguf").stat().st_mtime_ns
    path, fetched = pull_package(split_entry(), tmp_path, download=download)
    assert not fetched
    assert len(calls) == 1
    assert path.stat().st_mtime_ns == mtime


def test_checksum_mismatch_names_both_sums_and_leaves_no_file(tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as info:
        pull_package(split_entry(sha256=wrong), tmp_path, download=fake_download())
    assert wrong in str(info.value)
    assert WHOLE_SUM in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_package_sum_file_must_agree_with_the_pinned_sum(tmp_path: Path) -> None:
    sums = f"{'1' * 64}  toy.gguf\n"
    with pytest.raises(ChecksumMismatchError, match="SHA256SUMS"):
        pull_package(split_entry(sums_file=sums), tmp_path, download=fake_download(sums))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_pull_leaves_no_half_file(tmp_path: Path) -> None:
    def interrupted(done: int, total: int) -> None:
        if done > 2000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull_package(split_entry(), tmp_path, download=fake_download(), progress=interrupted)
    assert list(tmp_path.iterdir()) == []


def test_progress_reaches_the_total(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    pull_package(
        split_entry(), tmp_path, download=fake_download(), progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (len(WHOLE), len(WHOLE))


def test_local_gguf_is_copied_once(tmp_path: Path) -> None:
    source = tmp_path / "src" / "mine.gguf"
    source.parent.mkdir()
    source.write_bytes(WHOLE)
    store = tmp_path / "store"
    path, fetched = pull_local(source, store)
    assert fetched and path.read_bytes() == WHOLE
    assert pull_local(source, store) == (path, False)


def test_local_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "notes.gguf"
    source.write_bytes(b"hello")
    with pytest.raises(ModelSourceError, match="not a GGUF"):
        pull_local(source, tmp_path / "store")


def test_the_real_pulled_models_match_the_catalog() -> None:
    from tests.conftest import model_file

    for name in ("smollm2", "gemma3-270m"):
        assert sha256_of(model_file(name)) == CATALOG[name].sha256
