"""One file over HTTP, so that a person can trust it: resumable, verified, shared, bounded.

- Resumable: the bytes go to ``NAME.partial`` beside the target; a pull that is stopped
  (killed, a dropped connection) leaves it there, and the next pull asks only for the rest
  (HTTP ``Range``). A server that ignores the range sends the whole file, which replaces the
  partial one.
- Verified: the sha256 the source publishes (Hugging Face's LFS oid, the Ollama registry's
  layer digest) is checked over the whole file before it is renamed to its name; a file that
  does not match is deleted, and nothing is left under the final name. The size too.
- Shared: a pull holds an exclusive lock on ``.NAME.lock`` while it downloads, so two pulls of
  one file (two terminals, two API calls, two processes) download it once: the second waits,
  then finds the file in place.
- Bounded: the free disk space is checked before the first byte is asked for; a stalled
  transfer ends after ``timeout`` seconds without a byte; every failure is one line
  (:class:`~server.errors.ModelSourceError`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from server.errors import ChecksumMismatchError, ModelSourceError

Progress = Callable[[int, int], None]  # (bytes done, bytes in all; 0 when not known)
# A file's progress, by its label: "sha256:<hex>" where its digest is known, else its name.
ProgressFor = Callable[[str], Progress | None]
_CHUNK = 1 << 20
# Room left on the disk beyond the file itself.
DISK_MARGIN = 64 << 20
# A file whose size is not announced: the free space is checked again after each of these.
SPACE_CHECK_BYTES = 256 << 20
MAX_REDIRECTS = 10


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: where, how big, the sha256 its source publishes (if any), and the
    bytes it must begin with (a GGUF's magic, where nothing else can vouch for it)."""

    url: str
    size: int | None = None
    sha256: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    magic: bytes = b""


def fetch(
    client: httpx.Client,
    remote: RemoteFile,
    target: Path,
    *,
    progress: Progress | None = None,
) -> bool:
    """Make ``target`` hold ``remote``'s bytes, verified. Returns whether anything was
    downloaded (False: the file was already in place, or another pull just put it there)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(f".{target.name}.lock")):
        if target.is_file():
            return False
        partial = target.with_name(target.name + ".partial")
        digest = hashlib.sha256()
        # Without a digest nothing shows that a resumed file's two halves are one file's.
        have = _resume_from(partial, remote, digest) if remote.sha256 else 0
        if remote.size is not None:
            check_space(target.parent, remote.size - have, target.name)
        try:
            total, digest = _download(client, remote, partial, have, digest, progress)
        except BaseException:
            if remote.sha256 is None:  # not resumable: nothing to keep
                partial.unlink(missing_ok=True)
            raise
        if remote.size is not None and total != remote.size:
            partial.unlink(missing_ok=True)
            raise ModelSourceError(
                f"{target.name}: the server sent {total} bytes, expected {remote.size}"
            )
        actual = digest.hexdigest()
        if remote.sha256 is not None and actual != remote.sha256.lower():
            partial.unlink(missing_ok=True)
            raise ChecksumMismatchError(target.name, remote.sha256.lower(), actual)
        os.replace(partial, target)
        return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _resume_from(partial: Path, remote: RemoteFile, digest: hashlib._Hash) -> int:
    """How many bytes of an earlier pull are kept (hashed into ``digest``)."""
    if not partial.is_file():
        return 0
    have = partial.stat().st_size
    if remote.size is not None and have > remote.size:
        partial.unlink()
        return 0
    with partial.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return have


def check_space(folder: Path, needed: int, name: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed + DISK_MARGIN > free:
        raise ModelSourceError(
            f"{name}: not enough disk space in {folder}: {needed / 1e9:.2f} GB to fetch, "
            f"{free / 1e9:.2f} GB free"
        )


@contextmanager
def open_stream(
    client: httpx.Client, url: str, headers: Mapping[str, str]
) -> Iterator[httpx.Response]:
    """``GET url``, following redirects here (httpx would read each redirect's body whole,
    however long): at most :data:`MAX_REDIRECTS`, and ``Authorization`` only to the host it
    was meant for."""
    sent = dict(headers)
    origin = httpx.URL(url).host
    for _ in range(MAX_REDIRECTS + 1):
        request = client.build_request("GET", url, headers=sent)
        response = client.send(request, stream=True, follow_redirects=False)
        location = response.headers.get("location")
        if response.status_code in (301, 302, 303, 307, 308) and location:
            response.close()
            url = str(request.url.join(location))
            if httpx.URL(url).host != origin:
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            continue
        try:
            yield response
        finally:
            response.close()
        return
    raise ModelSourceError(f"{url}: more than {MAX_REDIRECTS} redirects")


def read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    """A response's body, refused when longer than ``limit`` bytes (a listing, a manifest,
    an error's text: none is large)."""
    body = bytearray()
    for block in response.iter_bytes():
        body += block
        if len(body) > limit:
            raise ModelSourceError(f"{what}: an answer longer than {limit} bytes")
    return bytes(body)


def _download(
    client: httpx.Client,
    remote: RemoteFile,
    partial: Path,
    have: int,
    digest: hashlib._Hash,
    progress: Progress | None,
) -> tuple[int, hashlib._Hash]:
    """Append the rest of the file to ``partial``; return the file's length and digest."""
    headers = dict(remote.headers)
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with open_stream(client, remote.url, headers) as response:
            if have and response.status_code == 416 and remote.size == have:
                return have, digest  # it was all there
            if response.status_code not in (200, 206):
                raise ModelSourceError(describe_status(response, remote.url))
            if response.status_code == 206 and not _resumes_at(response, have):
                partial.unlink(missing_ok=True)
                raise ModelSourceError(f"{remote.url}: the server resumed at another byte")
            if response.status_code == 200:
                have = 0  # the range was ignored: the whole file comes again
                digest = hashlib.sha256()
            total = remote.size or _length(response, have)
            if remote.size is None and total:
                check_space(partial.parent, total - have, partial.name)
            done = have
            checked = done
            with partial.open("ab" if have else "wb") as out:
                for block in response.iter_bytes():
                    if done < len(remote.magic):
                        head = remote.magic[done : done + len(block)]
                        if not block.startswith(head) and not head.startswith(block):
                            raise ModelSourceError(f"{remote.url} is not a GGUF file")
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if remote.size is not None and done > remote.size:
                        raise ModelSourceError(
                            f"{partial.name}: the server sent more than {remote.size} bytes"
                        )
                    if done - checked >= SPACE_CHECK_BYTES:  # a file of no announced size
                        check_space(partial.parent, 0, partial.name)
                        checked = done
                    if progress is not None:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
            return done, digest
    except httpx.HTTPError as exc:
        raise ModelSourceError(
            f"{remote.url}: {_reason(exc)} (run the pull again to resume)"
        ) from exc


def _resumes_at(response: httpx.Response, have: int) -> bool:
    """Whether a 206 answer continues at byte ``have`` (its ``Content-Range`` says so)."""
    value: str = response.headers.get("content-range", "")
    return value.startswith(f"bytes {have}-")


def _length(response: httpx.Response, have: int) -> int:
    try:
        return have + int(response.headers.get("content-length", ""))
    except ValueError:
        return 0


def describe_status(response: httpx.Response, url: str) -> str:
    """One line for a refused request."""
    status = response.status_code
    if status in (401, 403):
        return f"{url}: {status}: not allowed (a gated or private model needs a token)"
    if status == 404:
        return f"{url}: 404: not found"
    if status == 429:
        return f"{url}: 429: rate limited by the server; try again later"
    return f"{url}: HTTP {status}"


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "the server stopped sending"
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect"
    return str(exc) or type(exc).__name__


def terminal_progress(label: str) -> Progress | None:
    """A progress bar with speed and time left on an interactive terminal; None when stderr
    is not one."""
    if not sys.stderr.isatty():
        return None
    width = shutil.get_terminal_size().columns
    start = time.monotonic()
    first: list[int] = []
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if not first:
            first.append(done)
        if now - last[0] < 0.2 and done < total:
            return
        last[0] = now
        speed = (done - first[0]) / max(now - start, 1e-6)
        if total:
            filled = int(20 * done / total)
            bar = "#" * filled + "-" * (20 - filled)
            left = (total - done) / speed if speed > 0 else 0
            line = (
                f"{label} [{bar}] {done / 1e6:.1f}/{total / 1e6:.1f} MB "
                f"{speed / 1e6:.1f} MB/s {int(left) // 60}:{int(left) % 60:02d} left"
            )
        else:
            line = f"{label} {done / 1e6:.1f} MB {speed / 1e6:.1f} MB/s"
        end = "\n" if total and done >= total else ""
        sys.stderr.write("\r" + line[: width - 1] + end)
        sys.stderr.flush()

    return show
