"""A model reference, pulled: ``hf:user/repo[:QUANT][@revision]`` (or ``hf.co/user/repo:QUANT``),
``ollama:name[:tag]`` (or ``name:tag``), ``https://.../file.gguf``; fetched into the models
folder and recorded in the pulled models' table (:mod:`server.models.pulled`), where the
registry finds it by its name.

Where the files go, under ``models_dir``: ``hf/<user>/<repo>/<revision>/<path in the repo>``
(split parts keep their names, which llama.cpp needs to find the parts from the first),
``blobs/sha256-<hex>`` (Ollama's layers, as Ollama stores them) and ``url/<host>/<path>``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from server.errors import ModelSourceError
from server.models.download import ProgressFor, RemoteFile, fetch
from server.models.gguf import has_chat_template
from server.models.hub import Hub, parse_reference
from server.models.ollama_registry import DEFAULT_REGISTRY, Registry
from server.models.ollama_registry import parse_reference as parse_ollama_reference
from server.models.pulled import PulledModel, PulledModels
from server.models.sources import GGUF_MAGIC

# Seconds a transfer may go without a byte before it is given up (and can be resumed).
READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class PullOptions:
    """Where models come from: the hub's address and token."""

    hf_endpoint: str = "https://huggingface.co"
    hf_token: str | None = None
    ollama_registry: str = DEFAULT_REGISTRY
    timeout: float = READ_TIMEOUT


def is_reference(text: str) -> bool:
    """Whether ``text`` names a model to pull (not a file, not a packaged model)."""
    return (
        parse_reference(text) is not None
        or _is_url(text)
        or parse_ollama_reference(text) is not None
    )


def reference_name(text: str) -> str:
    """The name a pulled model is served under."""
    hub = parse_reference(text)
    if hub is not None:
        return hub.name
    if _is_url(text):
        return _url_name(text)
    ollama = parse_ollama_reference(text)
    if ollama is not None:
        return ollama.name
    raise ModelSourceError(
        f"'{text}' is not a model reference (hf:user/repo:QUANT, hf.co/user/repo:QUANT, "
        "ollama:name:tag or https://.../model.gguf)"
    )


def pull(
    text: str,
    models_dir: Path,
    options: PullOptions = PullOptions(),
    *,
    progress: ProgressFor | None = None,
    client: httpx.Client | None = None,
) -> PulledModel:
    """Fetch what ``text`` names (or find it already there) and record it; returns its row."""
    name = reference_name(text)
    own = client is None
    client = client or httpx.Client(
        follow_redirects=True, timeout=httpx.Timeout(options.timeout, connect=30.0)
    )
    try:
        hub_ref = parse_reference(text)
        ollama_ref = parse_ollama_reference(text) if not _is_url(text) else None
        settings: dict[str, Any] = {}
        if hub_ref is None and ollama_ref is not None:
            registry = Registry(client, options.ollama_registry)
            model = registry.pull(ollama_ref, models_dir, progress=progress)
            files = [model.gguf.relative_to(models_dir).as_posix()]
            template = model.template.relative_to(models_dir).as_posix() if model.template else None
            settings = model.settings
        elif hub_ref is not None:
            folder = models_dir / "hf" / hub_ref.repo / hub_ref.revision
            hub = Hub(client, options.hf_endpoint, options.hf_token)
            got = hub.pull(hub_ref, folder, progress=progress)
            files = [p.relative_to(models_dir).as_posix() for p in got.files]
            template = None
            if got.template is not None and not has_chat_template(got.gguf):
                template = got.template.relative_to(models_dir).as_posix()
        else:
            target = _url_target(models_dir, text)
            remote = RemoteFile(text, magic=GGUF_MAGIC)
            fetch(client, remote, target, progress=progress(target.name) if progress else None)
            files, template = [target.relative_to(models_dir).as_posix()], None
    finally:
        if own:
            client.close()
    try:
        size = sum((models_dir / f).stat().st_size for f in files)
    except OSError as exc:  # deleted under this pull (another model's delete): not whole
        raise ModelSourceError(f"{name}: a file went missing during the pull; pull again") from exc
    table = PulledModels(models_dir)
    earlier = table.get(name)
    pulled = table.put(PulledModel(name, text, tuple(files), template, settings, size))
    if earlier is not None:  # pulled again (a tag that moved): what it no longer uses goes
        table.delete_unused(earlier)
    return pulled


def _is_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and bool(parts.path.strip("/"))


def _url_target(models_dir: Path, url: str) -> Path:
    """Where a URL's file goes: ``url/<host>/<hash of the URL>/<its file name>``, every part
    made here, so that no URL reaches outside its folder, and two URLs never share a file."""
    parts = urlsplit(url)
    host = re.sub(r"[^A-Za-z0-9._-]", "_", parts.hostname or "host").strip(".") or "host"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return models_dir / "url" / host / key / f"{_url_name(url)}.gguf"


def _url_name(url: str) -> str:
    """A URL's model name: its file's name, in letters, digits, ``.``, ``_`` and ``-`` (no
    ``:``, which would make it an Ollama name or a tag)."""
    stem = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:120] or "model"
