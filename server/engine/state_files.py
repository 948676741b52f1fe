"""The folder of saved KV state files of one model identity, which several servers may share.

A file starts with a one-line JSON header (format version, the model identity, the tokens,
the state's length and sha256) followed by the raw state. Files for another model or another
llama.cpp build, truncated files, files whose header is malformed and files whose checksum
fails are dropped with a warning and never loaded.

Several replicas may write the same folder (a volume on one host, a ReadWriteMany volume on
Kubernetes), so nothing here assumes this process is the only writer:

- a file is written under a name no other writer uses (``.<name>.<random>.partial``) and then
  renamed into place, which is atomic: a reader sees the whole file or none of it, never a
  torn one. A file's name is the hash of its tokens, so two writers of one state end with one
  file; the loser's rename just replaces it with the same content;
- what the folder holds is learned by looking at it, at load and then every
  ``scan_interval`` seconds, on the background thread: files other servers wrote are reported
  as :class:`Found` (header read and checked), files they removed as :class:`Gone`, files
  they used as :class:`Touched` (a server that restores a state sets the file's mtime, so the
  least recently used file is the same one for every server, and the byte bound holds across
  all of them);
- a file can vanish between being listed and being read (another server evicted it): that is
  a miss, not an error.

A ``.partial`` file is only deleted once it is older than :data:`STALE_PARTIAL`: a younger one
may be another server's write in progress.

A state holds a prompt: its tokens (in the header) and the model's keys and values for them.
So the folders are created readable by the server's user alone (0700), and the files too
(0600). Every server sharing a folder must be trusted as much as this one: what it writes is
restored into llama.cpp.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

FORMAT = "hearth-kv-state-1"
# A write of tens of megabytes takes well under a second; a partial file this old is left
# over from a server that died while writing.
STALE_PARTIAL = 900.0
# A header holds the state's tokens: a million of them as JSON fit well within this.
MAX_HEADER = 16 << 20


@dataclass(frozen=True)
class Written:
    """This server's write of entry ``entry_id`` is on disk (``path`` None: it failed)."""

    entry_id: int
    path: Path | None
    size: int


@dataclass(frozen=True)
class Found:
    """A state file this server did not write (another server's, or one left from before)."""

    path: Path
    tokens: tuple[int, ...]
    size: int
    mtime: float


@dataclass(frozen=True)
class Gone:
    """A file seen before is no longer there (another server evicted or replaced it)."""

    path: Path


@dataclass(frozen=True)
class Touched:
    """A file was used (restored) by some server at ``mtime``."""

    path: Path
    mtime: float


Event = Written | Found | Gone | Touched


@dataclass(frozen=True)
class _Seen:
    inode: int
    mtime: float


class StateFolder:
    """Writes, reads and watches the state files of one model identity.

    Writes, touches and periodic scans run on one background thread (low priority: hashing
    and writing tens of megabytes must not take CPU from decoding); what it learns comes back
    as :data:`Event` values through :meth:`events`, drained by the engine thread, which alone
    keeps the index. Reads (:meth:`read`) and deletes (:meth:`remove`) are done by the caller.
    """

    def __init__(self, folder: Path, model_key: str, *, scan_interval: float) -> None:
        self.folder = folder
        self.model_key = model_key
        self.scan_interval = scan_interval
        _private_directory(folder)
        self._seen: dict[str, _Seen] = {}  # background thread only, after the first scan
        self._ops: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._events: queue.Queue[Event] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> list[Found]:
        """Look at the folder (on the calling thread, so that a restart finds its states at
        once), then start the background thread. Returns what the folder holds."""
        found = [e for e in self._scan() if isinstance(e, Found)]
        self._thread = threading.Thread(target=self._loop, name="kv-state-files", daemon=True)
        self._thread.start()
        return found

    def write(self, entry_id: int, tokens: tuple[int, ...], blob: memoryview) -> None:
        """Write ``blob`` in the background; a :class:`Written` event follows."""
        self._ops.put(("write", (entry_id, tokens, blob)))

    def touch(self, path: Path) -> None:
        """Mark ``path`` as just used, for every server's LRU order (in the background)."""
        self._ops.put(("touch", path))

    def events(self) -> list[Event]:
        drained: list[Event] = []
        while True:
            try:
                drained.append(self._events.get_nowait())
            except queue.Empty:
                return drained

    def close(self) -> None:
        """Finish queued writes and stop the thread."""
        if self._thread is not None:
            self._ops.put(None)
            self._thread.join(60)
            self._thread = None

    def read(self, path: Path) -> memoryview | None:
        """The state in ``path``, verified against its header; None if it is gone (another
        server evicted it) or unusable (then it is deleted)."""
        try:
            with path.open("rb") as fh:
                line = _header_line(fh)
                header = json.loads(line)
                size = int(header["size"])
                # Checked before allocating: the file may have been replaced since its header
                # was read, and a size no file holds must not become a huge allocation.
                if not 0 <= size == os.fstat(fh.fileno()).st_size - len(line):
                    raise ValueError("truncated")
                blob = bytearray(size)
                if fh.readinto(blob) != len(blob) or fh.read(1):
                    raise ValueError("truncated")
            if hashlib.sha256(blob).hexdigest() != header["sha256"]:
                raise ValueError("checksum mismatch")
            return memoryview(blob)
        except FileNotFoundError:
            logger.debug("KV state file %s was removed by another server", path.name)
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _drop_file(path, exc)
            return None

    @staticmethod
    def remove(path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()

    # -- the background thread ----------------------------------------------------------------

    def _loop(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        next_scan = time.monotonic() + self.scan_interval
        while True:
            timeout = max(0.0, next_scan - time.monotonic()) if self.scan_interval > 0 else None
            try:
                op = self._ops.get(timeout=timeout)
            except queue.Empty:
                op = ("scan", None)
            if op is None:
                return
            kind, argument = op
            # A bug here must not stop saving and watching for the rest of the run.
            try:
                if kind == "write":
                    self._write(*argument)
                elif kind == "touch":
                    self._touch(argument)
            except Exception:
                logger.exception("KV state folder %s: %s failed", self.folder, kind)
                if kind == "write":
                    self._events.put(Written(argument[0], None, 0))
            if self.scan_interval > 0 and time.monotonic() >= next_scan:
                next_scan = time.monotonic() + self.scan_interval
                try:
                    for event in self._scan():
                        self._events.put(event)
                except Exception:
                    logger.exception("KV state folder %s: scan failed", self.folder)

    def _write(self, entry_id: int, tokens: tuple[int, ...], blob: memoryview) -> None:
        header = {
            "format": FORMAT,
            "model": self.model_key,
            "tokens": list(tokens),
            "size": blob.nbytes,
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        name = state_file_name(tokens)
        path = self.folder / name
        tmp = self.folder / f".{name}.{secrets.token_hex(6)}.partial"
        try:
            descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as fh:
                fh.write(json.dumps(header).encode() + b"\n")
                fh.write(blob)
            os.replace(tmp, path)
            stat = path.stat()
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
            logger.warning("could not write KV state to disk: %s", exc)
            self._events.put(Written(entry_id, None, 0))
            return
        self._seen[name] = _Seen(stat.st_ino, stat.st_mtime)
        self._events.put(Written(entry_id, path, stat.st_size))

    def _touch(self, path: Path) -> None:
        try:
            os.utime(path)
            stat = path.stat()
        except OSError:
            return  # removed meanwhile: the next scan says so
        if path.name in self._seen:
            self._seen[path.name] = _Seen(stat.st_ino, stat.st_mtime)

    def _scan(self) -> list[Event]:
        """What changed in the folder since the last look."""
        events: list[Event] = []
        now = time.time()
        present: set[str] = set()
        try:
            listing = list(os.scandir(self.folder))
        except OSError as exc:
            logger.warning("cannot list the KV state folder %s: %s", self.folder, exc)
            return events
        for item in listing:
            name = item.name
            try:
                stat = item.stat()
            except OSError:
                continue  # removed while listing
            if name.endswith(".partial"):
                if now - stat.st_mtime > STALE_PARTIAL:
                    self.remove(Path(item.path))
                continue
            if not name.endswith(".state"):
                continue
            present.add(name)
            seen = self._seen.get(name)
            if seen is not None and seen.inode == stat.st_ino:
                if stat.st_mtime > seen.mtime:
                    events.append(Touched(Path(item.path), stat.st_mtime))
                    self._seen[name] = _Seen(stat.st_ino, stat.st_mtime)
                continue
            # New, or replaced by another writer since: read its header.
            tokens = self._read_header(Path(item.path), stat.st_size)
            if tokens is None:
                if self._seen.pop(name, None) is not None:
                    events.append(Gone(Path(item.path)))  # what was there is not any more
                continue
            self._seen[name] = _Seen(stat.st_ino, stat.st_mtime)
            events.append(Found(Path(item.path), tokens, stat.st_size, stat.st_mtime))
        for name in [n for n in self._seen if n not in present]:
            del self._seen[name]
            events.append(Gone(self.folder / name))
        return events

    def _read_header(self, path: Path, file_size: int) -> tuple[int, ...] | None:
        try:
            with path.open("rb") as fh:
                line = _header_line(fh)
            header = json.loads(line)
            if not isinstance(header, dict):
                raise ValueError("the header is not an object")
            if header.get("format") != FORMAT or header.get("model") != self.model_key:
                raise ValueError("written by another model or llama.cpp build")
            tokens, size, digest = header.get("tokens"), header.get("size"), header.get("sha256")
            if not _well_formed(tokens, size, digest):
                raise ValueError("the header's fields are malformed")
            if file_size - len(line) != size:
                raise ValueError("truncated")
            return tuple(header["tokens"])
        except FileNotFoundError:
            return None  # removed by another server since it was listed
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _drop_file(path, exc)
            return None


def _header_line(fh: BinaryIO) -> bytes:
    """The header line, read with a bound: a damaged file with no newline in its first
    :data:`MAX_HEADER` bytes must not be read into memory whole."""
    line = fh.readline(MAX_HEADER)
    if not line.endswith(b"\n"):
        raise ValueError("no header line")
    return line


def _well_formed(tokens: Any, size: Any, digest: Any) -> bool:
    return (
        isinstance(tokens, list)
        and bool(tokens)
        and all(type(t) is int for t in tokens)
        and type(size) is int
        and size >= 0
        and isinstance(digest, str)
    )


def state_file_name(tokens: Sequence[int]) -> str:
    """The file name of the state of ``tokens`` (the same for every server)."""
    return f"{hashlib.sha256(repr(tuple(tokens)).encode()).hexdigest()[:40]}.state"


def _drop_file(path: Path, reason: Exception) -> None:
    """An unusable state file: say why, and delete it so it is never tried again."""
    logger.warning("dropping KV state file %s: %s", path.name, reason)
    path.unlink(missing_ok=True)


def _private_directory(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by this user alone, and make it so
    if it exists: saved states hold prompts."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in [path, *missing]:
        with contextlib.suppress(OSError):
            folder.chmod(0o700)
