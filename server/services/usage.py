"""Usage accounting: one path for local generations, embeddings and remote models.

Each request has one :class:`Ledger`. A key is charged for what it was served: tokens a request
is about to use (a prompt, inputs to embed) are first checked against the key's tokens per
minute, so a request refused there costs nothing; then they are metered as they are used (a
long generation ends once its API key goes over, not counted after it ends). When the request
ends its :class:`~server.metrics.RunRecord` is booked once: into the token metrics, against
the key (whatever the meter did not count yet: a remote model's usage comes at its end) and
onto the request's context, for its access log line.
"""

from __future__ import annotations

from server.access import ApiKey, RateLimiter
from server.context import RequestContext
from server.metrics import Metrics, RunRecord


class Ledger:
    def __init__(
        self,
        context: RequestContext,
        metrics: Metrics | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._context = context
        self._metrics = metrics
        self._limiter = limiter
        self._metered = 0
        self._recorded = False

    @property
    def key(self) -> ApiKey | None:
        return self._context.api_key

    def check(self, tokens: int = 0) -> None:
        """Raise RateLimitError, counting nothing, if ``tokens`` more would take the API key
        over its tokens per minute (with none: if it is over already)."""
        if self._limiter is not None and self.key is not None:
            self._limiter.check_tokens(self.key, tokens)

    def meter(self, tokens: int) -> bool:
        """Count ``tokens`` against the API key now, as they are used; False once the key is
        over its tokens per minute (the work should stop there)."""
        self._metered += tokens
        if self._limiter is not None and self.key is not None:
            return self._limiter.consume_tokens(self.key, tokens)
        return True

    def record(self, record: RunRecord) -> None:
        """Book what the request did; only the first call counts."""
        if self._recorded:
            return
        self._recorded = True
        self._context.record = record
        self._context.model = self._context.model or record.model
        if self._metrics is not None:
            self._metrics.record_run(record)
        if self._limiter is not None and self.key is not None:
            self._limiter.record_tokens(self.key, record.total_tokens - self._metered)
