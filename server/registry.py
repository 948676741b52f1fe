"""The model registry: names and aliases to loaded models, loaded on first use.

An unknown name is a 404, never another model. A model that cannot load is a 503 that names
the reason, and it does not affect the others; the next request tries again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.engine.llama import LlamaBackend, LlamaEmbedder
from server.engine.scheduler import Scheduler
from server.engine.state_cache import StateCache
from server.engine.stream import GenerationStream
from server.engine.types import GenerationRequest, Grammar
from server.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    ShuttingDownError,
)
from server.models.sources import catalog_entry
from server.settings import ModelConfig, Settings

logger = logging.getLogger(__name__)

# Inputs embedded together in one decode.
EMBEDDING_SEQUENCES = 8


@dataclass
class ModelHandle:
    """A loaded model: its config, its tokenizer, and the door to its engine."""

    config: ModelConfig
    backend: LlamaBackend
    scheduler: Scheduler
    chat_template_source: str | None
    _embedder: LlamaEmbedder | None = field(default=None, repr=False)
    _embed_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def n_ctx(self) -> int:
        return self.backend.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.backend.n_vocab

    @property
    def adds_bos(self) -> bool:
        return self.backend.adds_bos

    def special_token_text(self, which: str) -> str:
        return self.backend.special_token_text(which)

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        return self.backend.tokenize(text, add_special=add_special, parse_special=True)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.backend.detokenize(tokens)

    def check_grammar(self, grammar: Grammar) -> str | None:
        """Why llama.cpp refuses ``grammar``, or None."""
        return self.backend.check_grammar(grammar)

    @property
    def n_embd(self) -> int:
        return self.backend.n_embd

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """Pooled embeddings of token inputs (blocking: call it from a worker thread). Inputs
        are embedded one request at a time, beside the decode loop, not in it."""
        with self._embed_lock:
            return self._embedding_context().embed(inputs)

    def _embedding_context(self) -> LlamaEmbedder:
        if not self.config.embeddings:
            raise InvalidRequestError(
                f"model '{self.name}' does not serve embeddings (embeddings = false in its config)",
                param="model",
            )
        if self._embedder is None:
            self._embedder = self.backend.embedder(
                n_ctx=self.n_ctx,
                n_seqs=EMBEDDING_SEQUENCES,
                n_threads=self.config.effective_threads(),
                pooling=self.config.pooling,
            )
        return self._embedder

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Queue ``request``; raises QueueFullError or ShuttingDownError if it cannot wait."""
        return GenerationStream(self.scheduler, request)

    def close(self) -> None:
        if self.scheduler.stop(timeout=30):
            with self._embed_lock:
                if self._embedder is not None:
                    self._embedder.close()
            self.backend.close()
        else:  # freeing the context under a running decode would crash the process
            logger.warning(
                "model %s: engine still busy at shutdown; leaving it to the OS", self.name
            )


class ModelRegistry:
    """Every configured model by name and alias; loads them on demand."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._by_name: dict[str, ModelConfig] = {}
        for model in settings.models:
            for name in model.names:
                self._by_name[name] = model
        self._loaded: dict[str, ModelHandle] = {}
        self._locks: dict[str, asyncio.Lock] = {m.name: asyncio.Lock() for m in settings.models}
        self._accepting = True
        self.created = int(time.time())

    @property
    def configs(self) -> list[ModelConfig]:
        return list(self._settings.models)

    def resolve(self, name: str) -> ModelConfig:
        """The config registered under ``name`` (a name or an alias), else 404."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ModelNotFoundError(name) from None

    def model_path(self, config: ModelConfig) -> Path:
        if config.path is not None:
            return self._settings.resolve_path(config.path)
        assert config.package is not None
        return self._settings.models_dir.expanduser() / catalog_entry(config.package).filename

    async def get(self, name: str) -> ModelHandle:
        """The loaded model for ``name``, loading it first if needed. Concurrent first requests
        share one load."""
        config = self.resolve(name)
        if not self._accepting:
            raise ShuttingDownError("the server is shutting down", retry_after=5)
        if (handle := self._loaded.get(config.name)) is not None:
            return handle
        async with self._locks[config.name]:
            if (handle := self._loaded.get(config.name)) is None:
                handle = await asyncio.to_thread(self._load, config)
                self._loaded[config.name] = handle
        return handle

    def _load(self, config: ModelConfig) -> ModelHandle:
        path = self.model_path(config)
        if not path.is_file():
            hint = f"; run `hearth models pull {config.package}`" if config.package else ""
            raise ModelUnavailableError(f"model '{config.name}': file {path} is missing{hint}")
        started = time.monotonic()
        backend = LlamaBackend(
            path,
            n_ctx=config.n_ctx,
            n_slots=config.slots,
            n_threads=config.effective_threads(),
            # Room for every slot's next token beside one prefill chunk.
            n_batch=config.prefill_chunk + config.slots,
            kv_unified=config.kv_unified,
            flash_attn=config.flash_attn,
            n_gpu_layers=config.n_gpu_layers,
        )
        template = config.chat_template
        if config.chat_template_file is not None:
            template_path = self._settings.resolve_path(config.chat_template_file)
            try:
                template = template_path.read_text()
            except OSError as exc:
                backend.close()
                raise ModelUnavailableError(
                    f"model '{config.name}': cannot read chat template {template_path}: {exc}"
                ) from exc
        if template is None:
            template = backend.chat_template()
        state_cache = None
        if self._settings.kv_cache_ram_bytes > 0:
            state_cache = StateCache(
                model_key=backend.identity,
                ram_bytes=self._settings.kv_cache_ram_bytes,
                disk_dir=self._settings.kv_cache_dir.expanduser(),
                disk_bytes=self._settings.kv_cache_disk_bytes,
            )
        scheduler = Scheduler(
            backend,
            state_cache=state_cache,
            name=config.name,
            max_queue=config.max_queue or self._settings.max_queue,
            prefill_chunk=config.prefill_chunk,
            queue_timeout=self._settings.queue_timeout,
        )
        scheduler.start()
        logger.info(
            "loaded model %s from %s in %.2fs (n_ctx=%d, slots=%d, chat template: %s)",
            config.name,
            path,
            time.monotonic() - started,
            backend.n_ctx,
            config.slots,
            "yes" if template else "none",
        )
        return ModelHandle(config, backend, scheduler, template)

    def stop_accepting(self) -> None:
        """From now on every new request gets 503; what is queued or running carries on."""
        self._accepting = False
        for handle in self._loaded.values():
            handle.scheduler.stop_accepting()

    def close(self) -> None:
        for handle in self._loaded.values():
            handle.close()
        self._loaded.clear()
