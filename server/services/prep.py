"""Where requests are prepared: chat templates rendered, prompts tokenized, grammars built.

That work is the client's to size (a long conversation, a big schema), so it runs in a
bounded pool of its own (:mod:`server.pool`): at most ``max_waiting`` requests wait for its
threads, beyond that the answer is 429. What one request may cost is bounded where it is
built (messages, tools, prompt length, schema size), so a running preparation always ends
soon.
"""

from __future__ import annotations

from server.pool import BoundedPool


class PrepExecutor(BoundedPool):
    """The pool requests are prepared in."""

    def __init__(self, threads: int, max_waiting: int) -> None:
        super().__init__(
            threads,
            max_waiting,
            name="prep",
            full="too many requests are waiting to be prepared; retry shortly",
        )
