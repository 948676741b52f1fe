"""What a configured model is, read from its GGUF without loading it: size, architecture,
quantization, parameter count, its chat template, and what Hearth serves it with (context
length, capabilities). For listings that describe models whether or not they are loaded."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.errors import ModelUnavailableError
from server.models.config import ModelConfig
from server.models.gguf import GGUFError, quantization, read_metadata
from server.registry import ModelRegistry
from server.services.formats import family_of
from server.services.reasoning import reasoning_markers
from server.settings import Settings


@dataclass(frozen=True)
class ModelFacts:
    name: str
    path: Path
    size: int
    modified: datetime
    # Stands in for a content digest: hashing a multi-GiB file per listing is too slow.
    digest: str
    architecture: str
    quantization: str
    parameter_size: str
    context_length: int  # what Hearth serves (the model's n_ctx), not what it was trained for
    chat_template: str | None
    capabilities: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)


class ModelInfo:
    """Facts of configured local models, read once per file version."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings
        self._cache: dict[tuple[str, int, int], dict[str, Any]] = {}

    async def facts(self, config: ModelConfig) -> ModelFacts:
        path = self._registry.model_path(config)
        try:
            stat = path.stat()
        except OSError as exc:
            raise ModelUnavailableError(
                f"model '{config.name}': {path} is missing (run `hearth models pull`)"
            ) from exc
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        metadata = self._cache.get(key)
        if metadata is None:
            try:
                metadata = await asyncio.to_thread(read_metadata, path)
            except (GGUFError, OSError) as exc:
                raise ModelUnavailableError(f"model '{config.name}': {exc}") from exc
            self._cache[key] = metadata
        arch = str(metadata.get("general.architecture", "unknown"))
        template = self._template(config, metadata)
        capabilities = ["completion"]
        if template is not None:
            capabilities.append("tools")
        if config.embeddings:
            capabilities.append("embedding")
        family = family_of(template).reasoning if template is not None else None
        if reasoning_markers(config.reasoning, template, family) is not None:
            capabilities.append("thinking")
        digest = hashlib.sha256(repr(key).encode()).hexdigest()
        return ModelFacts(
            name=config.name,
            path=path,
            size=stat.st_size,
            modified=datetime.fromtimestamp(stat.st_mtime, UTC),
            digest=digest,
            architecture=arch,
            quantization=quantization(metadata),
            parameter_size=str(metadata.get("general.size_label", "")),
            context_length=config.context(metadata).n_ctx,
            chat_template=template,
            capabilities=tuple(capabilities),
            metadata=metadata,
        )

    def _template(self, config: ModelConfig, metadata: dict[str, Any]) -> str | None:
        if config.chat_template is not None:
            return config.chat_template
        if config.chat_template_file is not None:
            try:
                return self._settings.resolve_path(config.chat_template_file).read_text()
            except OSError:
                return None
        template = metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) else None
