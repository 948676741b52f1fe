"""A loaded model, and the leases that keep it loaded while requests use it."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.embedding_worker import EmbeddingWorker
from server.engine.embedder import LlamaEmbedder
from server.engine.llama import LlamaBackend
from server.engine.scheduler import Scheduler
from server.engine.stream import GenerationStream, open_streams
from server.engine.types import GenerationRequest, Grammar
from server.errors import InvalidRequestError
from server.models.config import ModelConfig

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
    # Embedding requests wait at most this many deep (the model's max_queue).
    max_embedding_waiting: int = 64
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
        if len(requests) > self.scheduler.max_jobs_per_request:
            raise InvalidRequestError(
                f"the request makes {len(requests)} generations (choices times prompts); "
                f"model '{self.name}' takes at most {self.scheduler.max_jobs_per_request} "
                "from one client at once",
                param="n",
                code="too_many_choices",
            )
        return open_streams(self.scheduler, requests)

    @property
    def idle(self) -> bool:
        if self.active:
            return False
        stats = self.scheduler.stats()
        return stats.queued == 0 and stats.deferred == 0 and stats.running == 0

    def lease(self) -> Lease:
        """Hold the model loaded until the lease is released."""
        self.active += 1
        self.last_used = time.monotonic()
        return Lease(self)

    def close(self) -> None:
        if self.scheduler.stop(timeout=30):
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
