"""A loaded model, and the leases that keep it loaded while requests use it."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.engine.embedder import LlamaEmbedder
from server.engine.llama import LlamaBackend
from server.engine.scheduler import Scheduler
from server.engine.stream import GenerationStream
from server.engine.types import GenerationRequest, Grammar
from server.errors import InvalidRequestError
from server.settings import ModelConfig

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
    # Estimated memory: the GGUF's size plus the KV cache's.
    size_bytes: int = 0
    # Seconds idle before unloading (None: never); a request's keep_alive replaces it.
    keep_alive: float | None = None
    last_used: float = field(default_factory=time.monotonic)
    # Requests holding a lease on the model: it is never unloaded while any do.
    active: int = 0
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

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.scheduler.queued == 0 and self.scheduler.busy_slots == 0

    def lease(self) -> Lease:
        """Hold the model loaded until the lease is released."""
        self.active += 1
        self.last_used = time.monotonic()
        return Lease(self)

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


class Lease:
    """A request's hold on a loaded model. ``release`` is idempotent, and a lease that is
    dropped without being released (a request abandoned between preparing and running) is
    released when it is garbage-collected, so a model can never be pinned by a lost request."""

    def __init__(self, handle: ModelHandle) -> None:
        self.handle = handle
        self._release = weakref.finalize(self, _release, handle)

    def release(self) -> None:
        self._release()


def _release(handle: ModelHandle) -> None:
    handle.active -= 1
    handle.last_used = time.monotonic()
