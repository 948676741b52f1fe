"""Models in Ollama's registry: ``ollama:name[:tag]``, ``ollama:user/name:tag``, or a bare
``name:tag`` (``qwen3:4b``, ``llama3.2:latest``).

The manifest comes from ``GET {registry}/v2/{namespace}/{name}/manifests/{tag}`` (``library``
is the namespace of Ollama's own models); each layer from ``GET {registry}/v2/{namespace}/
{name}/blobs/{digest}`` (which may redirect), stored as ``blobs/sha256-<hex>`` in the models
folder, as Ollama stores them, and verified against its digest. The model layer
(``application/vnd.ollama.image.model``) is the GGUF; the parameters layer
(``...image.params``, JSON) becomes the model's sampling defaults, stop strings and context;
the system layer its default system prompt; the template layer (Go's text/template) its chat
template where the GGUF has none and the template is one Hearth reads
(:mod:`server.models.ollama_template`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.errors import ModelSourceError
from server.models.download import ProgressFor, RemoteFile, fetch, open_stream, read_limited
from server.models.gguf import has_chat_template
from server.models.ollama_template import to_jinja

DEFAULT_REGISTRY = "https://registry.ollama.ai"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MODEL_LAYER = "application/vnd.ollama.image.model"
PARAMS_LAYER = "application/vnd.ollama.image.params"
TEMPLATE_LAYER = "application/vnd.ollama.image.template"
SYSTEM_LAYER = "application/vnd.ollama.image.system"
# A manifest or parameters layer is small; more is not one.
MAX_SMALL = 1 << 20
# The most context a params layer's num_ctx sets, and the longest SYSTEM taken.
MAX_NUM_CTX = 32768
MAX_SYSTEM = 65536

_PART = r"[a-z0-9][a-z0-9._-]{0,79}"
_REFERENCE = re.compile(
    rf"^(?:ollama:)?(?:(?P<namespace>{_PART})/)?(?P<name>{_PART})(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{{0,79}}))?$"
)
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
# Ollama's parameter names, and the sampling default each sets.
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "num_predict": "max_tokens",
}


@dataclass(frozen=True)
class OllamaReference:
    namespace: str
    model: str
    tag: str

    @property
    def name(self) -> str:
        """The model's name, as Ollama lists it (``qwen3:4b``, ``user/model:tag``)."""
        prefix = "" if self.namespace == "library" else f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"


def parse_reference(text: str) -> OllamaReference | None:
    """``ollama:...`` always; a bare ``name:tag`` (with its tag) too."""
    text = text.strip()
    explicit = text.startswith("ollama:")
    if not explicit and ":" not in text:
        return None
    match = _REFERENCE.match(text)
    if match is None:
        return None
    return OllamaReference(
        match.group("namespace") or "library", match.group("name"), match.group("tag") or "latest"
    )


@dataclass(frozen=True)
class OllamaModel:
    reference: OllamaReference
    gguf: Path
    settings: dict[str, Any]  # ModelConfig fields from the parameters and system layers
    template: Path | None = None  # the template layer as a chat template, where it is one


class Registry:
    """Ollama's registry (or a mirror of it), through ``client``."""

    def __init__(self, client: httpx.Client, url: str = DEFAULT_REGISTRY) -> None:
        self._client = client
        self._url = url.rstrip("/")

    def manifest(self, ref: OllamaReference) -> dict[str, Any]:
        url = f"{self._url}/v2/{ref.namespace}/{ref.model}/manifests/{ref.tag}"
        try:
            with open_stream(self._client, url, {"Accept": MANIFEST_TYPE}) as response:
                status = response.status_code
                body = read_limited(response, MAX_SMALL, url) if status == 200 else b""
        except httpx.HTTPError as exc:
            raise ModelSourceError(f"{self._url}: cannot reach the registry: {exc}") from exc
        if status == 404:
            raise ModelSourceError(f"{ref.name} is not in the registry at {self._url}")
        if status != 200:
            raise ModelSourceError(f"{url}: HTTP {status}")
        try:
            manifest = json.loads(body)
            layers = manifest["layers"]
            assert isinstance(layers, list)
            for layer in layers:
                _digest(layer)
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise ModelSourceError(f"{url}: not a model manifest ({exc})") from exc
        return dict(manifest)

    def pull(
        self, ref: OllamaReference, models_dir: Path, *, progress: ProgressFor | None = None
    ) -> OllamaModel:
        layers = self.manifest(ref)["layers"]
        model = [layer for layer in layers if layer.get("mediaType") == MODEL_LAYER]
        if len(model) != 1:
            raise ModelSourceError(f"{ref.name}: the manifest has {len(model)} model layers")
        gguf = self._blob(ref, model[0], models_dir, progress)
        small = {
            layer.get("mediaType"): self._blob(ref, layer, models_dir, None).read_bytes()
            for layer in layers
            if layer.get("mediaType") in (PARAMS_LAYER, TEMPLATE_LAYER, SYSTEM_LAYER)
            and isinstance(layer.get("size"), int)
            and layer["size"] <= MAX_SMALL
        }
        settings = settings_from_params(small[PARAMS_LAYER]) if PARAMS_LAYER in small else {}
        system = small.get(SYSTEM_LAYER, b"").decode("utf-8", errors="replace").strip()
        if system and len(system) <= MAX_SYSTEM:
            settings["system"] = system
        template = None
        go = small.get(TEMPLATE_LAYER)
        if go is not None and not has_chat_template(gguf):
            jinja = to_jinja(go.decode("utf-8", errors="replace"))
            if jinja is not None:
                template = models_dir / "templates" / f"{_digest_of(go)}.jinja"
                template.parent.mkdir(parents=True, exist_ok=True)
                template.write_text(jinja)
        return OllamaModel(ref, gguf, settings, template)

    def _blob(
        self,
        ref: OllamaReference,
        layer: dict[str, Any],
        models_dir: Path,
        progress: ProgressFor | None,
    ) -> Path:
        sha = _digest(layer)
        size = layer.get("size")
        target = blob_path(models_dir, sha)
        url = f"{self._url}/v2/{ref.namespace}/{ref.model}/blobs/sha256:{sha}"
        remote = RemoteFile(url, size if isinstance(size, int) else None, sha)
        fetch(
            self._client, remote, target, progress=progress(f"sha256:{sha}") if progress else None
        )
        return target


def blob_path(models_dir: Path, sha: str) -> Path:
    return models_dir / "blobs" / f"sha256-{sha}"


def _digest(layer: Any) -> str:
    match = _DIGEST.match(str(layer.get("digest", ""))) if isinstance(layer, dict) else None
    if match is None:
        raise ValueError(f"a layer without a sha256 digest: {layer!r}"[:200])
    return match.group(1)


def _digest_of(data: bytes) -> str:
    return "sha256-" + hashlib.sha256(data).hexdigest()


def settings_from_params(data: bytes) -> dict[str, Any]:
    """An Ollama parameters layer (JSON) as model settings: sampling defaults and
    ``num_ctx``. Values that are not numbers, or out of range, are left out."""
    try:
        params = json.loads(data)
    except ValueError:
        return {}
    if not isinstance(params, dict):
        return {}
    defaults: dict[str, Any] = {}
    for key, field in _SAMPLING.items():
        value = params.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            defaults[field] = value
    stop = params.get("stop")
    if isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
        defaults["stop"] = stop
    settings: dict[str, Any] = {}
    if defaults:
        settings["defaults"] = _valid_defaults(defaults)
    num_ctx = params.get("num_ctx")
    # A remote layer may not size the KV cache past what a local default would.
    if isinstance(num_ctx, int) and not isinstance(num_ctx, bool) and 64 <= num_ctx <= MAX_NUM_CTX:
        settings["n_ctx"] = num_ctx
    return settings


def _valid_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    from server.models.config import SamplingDefaults

    kept: dict[str, Any] = {}
    for key, value in defaults.items():
        try:
            SamplingDefaults.model_validate({key: value})
        except ValidationError:
            continue
        kept[key] = int(value) if key in ("top_k", "max_tokens") else value
    return kept
