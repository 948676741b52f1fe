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
  a miss, not an error. So is a read that fails for another reason (an NFS hiccup, a file of
  another user): only a file whose content is wrong is deleted.

A ``.partial`` file is only deleted once it is older than :data:`STALE_PARTIAL`: a younger one
may be another server's write in progress (unless the folder is not shared: ``scan_interval``
0).

Anything in the folder that is not a regular file (a FIFO, a folder) is left alone and never
opened: opening a FIFO waits for a writer, and would hold up the start or the scans for good.

A state holds a prompt: its tokens (in the header) and the model's keys and values for them.
So the folders are created readable by the server's user alone (0700), and the files too
(0600). Every server sharing a folder must be trusted as much as this one: what it writes is
restored into llama.cpp.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
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
from stat import S_ISREG
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
    """This server's write of entry ``entry_id`` (of ``tokens``) is on disk (``path`` None:
    it failed)."""

    entry_id: int
    tokens: tuple[int, ...]
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


@dataclass(frozen=True)
class Forgotten:
    """The background thread has taken in that this server removed ``path``: events about
    it from before (queued while the removal was on its way) are stale, later ones are not."""

    path: Path


Event = Written | Found | Gone | Touched | Forgotten


@dataclass(frozen=True)
class _Seen:
    inode: int
    mtime: float


class _BadFile(Exception):
    """A state file whose content is wrong: it is deleted."""


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
        found = [e for e in self._scan(starting=True) if isinstance(e, Found)]
        self._thread = threading.Thread(target=self._loop, name="kv-state-files", daemon=True)
        self._thread.start()
        return found

    def write(self, entry_id: int, tokens: tuple[int, ...], blob: memoryview) -> None:
        """Write ``blob`` in the background; a :class:`Written` event follows."""
        self._ops.put(("write", (entry_id, tokens, blob)))

    def touch(self, path: Path) -> None:
        """Mark ``path`` as just used, for every server's LRU order (in the background)."""
        self._ops.put(("touch", path))

    def remove(self, path: Path) -> None:
        """Delete ``path`` now; the background thread then forgets it was there (and says so
        with a :class:`Forgotten` event), so that a file another server writes under the same
        name later, even on the same inode, is found as new."""
        with contextlib.suppress(OSError):
            path.unlink()
        self._ops.put(("forget", path))

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
        server evicted it) or unusable (then it is deleted). Other I/O errors (an NFS hiccup,
        a file of another user) raise OSError: the file may be good, and stays."""
        try:
            with _open_regular(path) as fh:
                header, length = self._header(fh, path)
                size = header["size"]
                # Checked before allocating: the file may have been replaced since its header
                # was first read, and a size no file holds must not become a huge allocation.
                if size != os.fstat(fh.fileno()).st_size - length:
                    raise _BadFile("truncated")
                blob = bytearray(size)
                if fh.readinto(blob) != len(blob) or fh.read(1):
                    raise _BadFile("truncated")
            if hashlib.sha256(blob).hexdigest() != header["sha256"]:
                raise _BadFile("checksum mismatch")
            return memoryview(blob)
        except FileNotFoundError:
            logger.debug("KV state file %s was removed by another server", path.name)
        except _BadFile as exc:
            _drop_file(path, exc)
        return None

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
                elif kind == "forget":
                    self._seen.pop(argument.name, None)
                    self._events.put(Forgotten(argument))
            except Exception:
                logger.exception("KV state folder %s: %s failed", self.folder, kind)
                if kind == "write":
                    self._events.put(Written(argument[0], argument[1], None, 0))
            if self.scan_interval > 0 and time.monotonic() >= next_scan:
                next_scan = time.monotonic() + self.scan_interval
                for event in self._scan():
                    self._events.put(event)

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
            self._events.put(Written(entry_id, tokens, None, 0))
            return
        self._seen[name] = _Seen(stat.st_ino, stat.st_mtime)
        self._events.put(Written(entry_id, tokens, path, stat.st_size))

    def _touch(self, path: Path) -> None:
        try:
            os.utime(path)
            stat = path.stat()
        except OSError:
            return  # removed meanwhile: the next scan says so
        if path.name in self._seen:
            self._seen[path.name] = _Seen(stat.st_ino, stat.st_mtime)

    def _scan(self, *, starting: bool = False) -> list[Event]:
        """What changed in the folder since the last look."""
        events: list[Event] = []
        try:
            listing = list(os.scandir(self.folder))
        except OSError as exc:
            logger.warning("cannot list the KV state folder %s: %s", self.folder, exc)
            return events
        present: set[str] = set()
        for item in listing:
            try:
                self._look_at(item, events, present, starting)
            except Exception:  # one odd file must not hide the others
                logger.exception("KV state folder %s: cannot look at %s", self.folder, item.name)
                present.add(item.name)  # not Gone: it is there
        for name in [n for n in self._seen if n not in present]:
            del self._seen[name]
            events.append(Gone(self.folder / name))
        return events

    def _look_at(
        self, item: os.DirEntry[str], events: list[Event], present: set[str], starting: bool
    ) -> None:
        name, path = item.name, Path(item.path)
        if name.endswith(".partial"):
            # A young one may be another server's write in progress, unless none shares this
            # folder: then it was this server's own, cut short when it stopped.
            stale = starting and self.scan_interval == 0
            with contextlib.suppress(OSError):
                if stale or time.time() - item.stat().st_mtime > STALE_PARTIAL:
                    path.unlink()
            return
        if not name.endswith(".state"):
            return
        try:
            stat = item.stat()
        except OSError:
            return  # removed while listing: Gone, if it was seen
        if not S_ISREG(stat.st_mode):
            # A FIFO (a folder, a device) under a state's name is not a state, and opening a
            # FIFO waits for a writer: never opened, never deleted, and Gone if it replaced
            # a file seen before.
            logger.debug("KV state folder %s: %s is not a regular file", self.folder, name)
            return
        present.add(name)
        seen = self._seen.get(name)
        if seen is not None and seen.inode == stat.st_ino:
            if stat.st_mtime > seen.mtime:
                events.append(Touched(path, stat.st_mtime))
                self._seen[name] = _Seen(stat.st_ino, stat.st_mtime)
            return
        # New, or replaced by another writer since: read its header.
        try:
            with _open_regular(path) as fh:
                header, length = self._header(fh, path)
                opened = os.fstat(fh.fileno())  # the file read, not the one listed
            if opened.st_size - length != header["size"]:
                raise _BadFile("truncated")
        except FileNotFoundError:
            present.discard(name)  # removed since it was listed
            return
        except OSError as exc:
            logger.warning("could not read KV state file %s: %s", name, exc)
            return  # tried again at the next scan
        except _BadFile as exc:
            _drop_file(path, exc)
            present.discard(name)
            return
        self._seen[name] = _Seen(opened.st_ino, opened.st_mtime)
        events.append(Found(path, tuple(header["tokens"]), opened.st_size, opened.st_mtime))

    def _header(self, fh: BinaryIO, path: Path) -> tuple[dict[str, Any], int]:
        """The checked header of an open state file, and its length in bytes. Raises
        :class:`_BadFile` for any content that is wrong, OSError for I/O."""
        line = fh.readline(MAX_HEADER)  # bounded: a damaged file need not hold a newline
        if not line.endswith(b"\n"):
            raise _BadFile("no header line")
        try:
            header = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise _BadFile(f"the header is not JSON ({exc.__class__.__name__})") from None
        if not isinstance(header, dict):
            raise _BadFile("the header is not an object")
        if header.get("format") != FORMAT or header.get("model") != self.model_key:
            raise _BadFile("written by another model or llama.cpp build")
        tokens, size, digest = header.get("tokens"), header.get("size"), header.get("sha256")
        if not _well_formed(tokens, size, digest):
            raise _BadFile("the header's fields are malformed")
        if path.name != state_file_name(header["tokens"]):
            raise _BadFile("named for other tokens")
        return header, len(line)


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


def _open_regular(path: Path) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file, else OSError. Opened without
    blocking: a FIFO put in the file's place since it was listed would otherwise wait for a
    writer, and hold up the thread (the engine's, or the one that scans) for good."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _drop_file(path: Path, reason: Exception) -> None:
    """An unusable state file: say why, and delete it so it is never tried again."""
    logger.warning("dropping KV state file %s: %s", path.name, reason)
    with contextlib.suppress(OSError):
        path.unlink()


def _private_directory(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by this user alone, and make it so
    if it exists: saved states hold prompts."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in [path, *missing]:
        with contextlib.suppress(OSError):
            folder.chmod(0o700)
