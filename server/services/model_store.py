"""Pulling, copying, creating and deleting models while the server runs (Ollama's management
API, the web page's model manager), on the code ``hearth pull`` uses
(:mod:`server.models.pull`). A model pulled or created here is served at once: it joins the
registry.

A pull runs in a thread (it is blocking I/O); its progress crosses to the event loop as
Ollama's progress objects (``{"status": "pulling <digest>", "digest", "total", "completed"}``).
A client that goes away stops the pull at its next block: what was fetched stays, and the next
pull resumes from there.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from server.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ModelSourceError,
    ModelUnavailableError,
    PayloadTooLargeError,
    QueueFullError,
)
from server.models.download import Progress, check_space
from server.models.gguf import GGUFError, read_metadata
from server.models.ollama_registry import blob_path, settings_from_params
from server.models.ollama_registry import parse_reference as ollama_name
from server.models.pull import PullOptions, is_reference, pull
from server.models.pulled import PulledModel
from server.registry import ModelRegistry
from server.settings import Settings

# How often a pull's progress is sent (seconds), at most.
PROGRESS_INTERVAL = 0.25
# Pulls running at once, at most (each is a thread and a download); beyond, 429.
MAX_PULLS = 4


class PullCancelled(ModelSourceError):
    """The client that asked for a pull went away."""


class ModelStore:
    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self._settings = settings
        self._registry = registry
        self._options = PullOptions(
            settings.hf_endpoint, settings.hf_token, settings.ollama_registry
        )
        self._pulling = 0

    @property
    def models_dir(self) -> Path:
        return self._settings.models_dir.expanduser()

    async def pull(self, reference: str) -> AsyncIterator[dict[str, Any]]:
        """Pull ``reference``, yielding Ollama's progress objects, the last ``success``; a
        failure raises (:class:`ModelSourceError`, one line)."""
        if not is_reference(reference) and ollama_name(f"ollama:{reference}") is not None:
            reference = f"ollama:{reference}"  # Ollama's own names: `llama3` is llama3:latest
        if not is_reference(reference):
            raise InvalidRequestError(
                f"'{reference}' is not a model to pull (name:tag, ollama:name:tag, "
                "hf.co/user/repo:QUANT, hf:user/repo:QUANT or https://.../model.gguf)",
                param="model",
            )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def send(event: dict[str, Any] | BaseException | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def progress_for(label: str) -> Progress:
            last = [0.0]

            def progress(done: int, total: int) -> None:
                if stop.is_set():
                    raise PullCancelled("the pull was cancelled (it resumes when asked again)")
                now = time.monotonic()
                if now - last[0] >= PROGRESS_INTERVAL or (total and done >= total):
                    last[0] = now
                    send(_pulling(label, done, total))

            return progress

        def work() -> None:
            try:
                pulled = pull(reference, self.models_dir, self._options, progress=progress_for)
                send({"status": "verifying sha256 digest"})
                send({"status": "writing manifest"})
                # Served from now, whether or not the client is still there to hear it.
                loop.call_soon_threadsafe(self._registry.add_pulled, pulled)
                send(None)
            except BaseException as exc:  # any failure crosses to the event loop
                send(exc)
            finally:
                loop.call_soon_threadsafe(self._pull_ended)

        if self._pulling >= MAX_PULLS:
            raise QueueFullError(
                f"{MAX_PULLS} pulls are running; try again when one ends", retry_after=10
            )
        self._pulling += 1  # from here until the thread ends (after the client, if it leaves)
        thread = threading.Thread(target=work, name=f"pull {reference}", daemon=True)
        try:
            yield {"status": "pulling manifest"}
            thread.start()
            while True:
                event = await events.get()
                if event is None:
                    break
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            stop.set()  # if the client left, the pull stops at its next block
            if thread.ident is None:  # it left before the pull began
                self._pulling -= 1
        yield {"status": "success"}

    def _pull_ended(self) -> None:
        self._pulling -= 1

    async def delete(self, name: str) -> None:
        """Forget a pulled model and delete its files (those no other model uses)."""
        model = await asyncio.to_thread(self._registry.pulled.get, name)
        if model is None:
            if any(name in c.names for c in self._registry.configs):
                raise InvalidRequestError(
                    f"model '{name}' is in the config file; Hearth only deletes models it "
                    "pulled or created",
                    param="model",
                )
            raise ModelNotFoundError(name)
        if self._registry.is_pulled(name):  # served (not shadowed by a configured model)
            if not await self._registry.unload_if_idle(name):
                raise ModelUnavailableError(f"model '{name}' is in use; try again when idle")
            self._registry.remove_pulled(name)
        await asyncio.to_thread(self._registry.pulled.remove, name)

    async def copy(self, source: str, destination: str) -> None:
        """Serve the model ``source`` under the name ``destination`` too."""
        config = self._registry.resolve(source)
        if any(destination in c.names for c in self._registry.configs):
            raise InvalidRequestError(f"model '{destination}' exists", param="destination")
        if config.upstream is not None:
            raise InvalidRequestError(f"model '{source}' is remote", param="source")
        original = await asyncio.to_thread(self._registry.pulled.get, config.name)
        if original is not None:
            copied = PulledModel(
                destination, original.reference, original.files, original.template,
                original.settings, original.size,
            )  # fmt: skip
        else:
            path = self._registry.model_path(config)
            settings = config.model_dump(
                exclude={"name", "aliases", "path", "package", "source", "upstream"},
                exclude_defaults=True,
                mode="json",
            )
            copied = PulledModel(
                destination, f"copy of {config.name}", (str(path),), None, settings,
                path.stat().st_size if path.is_file() else 0,
            )  # fmt: skip
        self._registry.add_pulled(await asyncio.to_thread(self._registry.pulled.put, copied))

    def has_blob(self, digest: str) -> bool:
        return blob_path(self.models_dir, _sha(digest)).is_file()

    async def put_blob(
        self, digest: str, chunks: AsyncIterator[bytes], size: int | None = None
    ) -> None:
        """Store an uploaded blob under its digest, once its bytes have that digest; ``size``
        (the announced length) is checked against the free disk space first."""
        sha = _sha(digest)
        target = blob_path(self.models_dir, sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        if size is not None:
            try:
                check_space(target.parent, size, target.name)
            except ModelSourceError as exc:
                raise PayloadTooLargeError(exc.message) from None
        partial = target.with_name(f"{target.name}.upload-{os.getpid()}-{id(chunks)}")
        hasher = hashlib.sha256()
        try:
            with partial.open("wb") as out:
                async for chunk in chunks:
                    hasher.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
            if hasher.hexdigest() != sha:
                raise InvalidRequestError(
                    f"the blob's sha256 is {hasher.hexdigest()}, not {sha}", param="digest"
                )
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    async def create(
        self,
        name: str,
        files: Mapping[str, str],
        parameters: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """A model from an uploaded GGUF blob (``files``: its file name and digest)."""
        if not files:
            raise InvalidRequestError("create needs `files`: a GGUF blob's digest", param="files")
        ggufs = [d for f, d in files.items() if f.lower().endswith(".gguf")]
        if len(ggufs) != 1:
            raise InvalidRequestError("create takes exactly one .gguf file", param="files")
        sha = _sha(ggufs[0])
        path = blob_path(self.models_dir, sha)
        if not path.is_file():
            raise InvalidRequestError(
                f"no blob sha256:{sha}: upload it first (POST /api/blobs/sha256:{sha})",
                param="files",
            )
        yield {"status": "parsing GGUF"}
        try:
            await asyncio.to_thread(read_metadata, path)
        except (GGUFError, OSError) as exc:
            raise InvalidRequestError(f"the blob is not a GGUF file: {exc}", param="files") from exc
        yield {"status": f"using existing layer sha256:{sha}"}
        settings = settings_from_params(_json_bytes(parameters)) if parameters else {}
        if any(name in c.names for c in self._registry.configs) and not self._registry.is_pulled(
            name
        ):
            raise InvalidRequestError(f"model '{name}' is in the config file", param="model")
        if self._registry.is_pulled(name) and not await self._registry.unload_if_idle(name):
            raise ModelUnavailableError(f"model '{name}' is in use; try again when idle")
        yield {"status": "writing manifest"}
        model = PulledModel(
            name, f"created from sha256:{sha}", (path.relative_to(self.models_dir).as_posix(),),
            None, settings, path.stat().st_size,
        )  # fmt: skip
        table = self._registry.pulled
        earlier = await asyncio.to_thread(table.get, name)
        # The new row first: a file both use (the same blob, created again) is kept.
        self._registry.add_pulled(await asyncio.to_thread(table.put, model))
        if earlier is not None:
            await asyncio.to_thread(table.delete_unused, earlier)
        yield {"status": "success"}


def _pulling(label: str, done: int, total: int) -> dict[str, Any]:
    if label.startswith("sha256:"):
        return {
            "status": f"pulling {label[7:19]}",
            "digest": label,
            "total": total,
            "completed": done,
        }
    return {"status": f"pulling {label}", "total": total, "completed": done}


def _sha(digest: str) -> str:
    text = digest.removeprefix("sha256:").removeprefix("sha256-")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise InvalidRequestError(f"'{digest}' is not a sha256 digest", param="digest")
    return text


def _json_bytes(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()
