"""Whether a batch of one sequence's tokens gets exactly the logits of single tokens.

That is what lets speculation check its guesses in one batch and still give exactly plain
decoding's output. It depends on the kernels llama.cpp picks for the model, the cache types,
the attention path, the context length and the hardware (on the CPU, SmolLM2: exact with flash
attention and a q8_0 cache; not with an f16 one, nor with flash attention off past a few dozen
cells), so it is measured at load, not assumed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from server.engine.backend import BatchEntry

if TYPE_CHECKING:  # the check drives the real backend, which does not import it
    from server.engine.llama import LlamaBackend

logger = logging.getLogger(__name__)

# Answers by model identity (the same file, build and cache layout).
_EXACT_BATCHES: dict[str, bool] = {}

# The check: this many tokens decoded together after this many cells, where the differences
# showed, with as many rows as a step of guesses has.
_GUESSED, _PREFIX = 9, 300


def batch_rows_match_single(backend: LlamaBackend) -> bool:
    """Whether several tokens of one sequence decoded in one batch, beside another sequence's
    token, get bit for bit the logits the same tokens get decoded one at a time. Kept per model
    identity; a decode that fails answers False. Uses the first two slots and clears them; call
    it before serving."""
    known = _EXACT_BATCHES.get(backend.identity)
    if known is None:
        try:
            known = _probe(backend)
        except RuntimeError as exc:  # a decode that fails: not exact, and not fatal
            logger.warning("could not check batch exactness: %s", exc)
            known = False
        _EXACT_BATCHES[backend.identity] = known
    return known


def _probe(backend: LlamaBackend) -> bool:
    prefix = min(_PREFIX, backend.n_ctx - _GUESSED - 1)
    if prefix < 16 or backend.n_batch < _GUESSED + 1:
        return False
    text = "Every spring the clerks copied the old accounts into new books, line by line. "
    tokens = backend.tokenize(text * (prefix // 8), add_special=False)[: prefix + _GUESSED]
    if len(tokens) < prefix + _GUESSED:
        return False
    other = min(1, backend.n_slots - 1)
    lengths = {0: prefix, other: 8} if other else {0: prefix}
    try:
        for slot, length in lengths.items():
            backend.clear(slot)
            for start in range(0, length, backend.n_batch):
                piece = tokens[start : min(length, start + backend.n_batch)]
                backend.decode([BatchEntry(slot, t, start + i, False) for i, t in enumerate(piece)])
        together = [BatchEntry(0, t, prefix + i, True) for i, t in enumerate(tokens[prefix:])]
        if other:
            together.insert(0, BatchEntry(other, tokens[8], 8, True))
        backend.decode(together)
        batched = backend.output_logits(len(together))[1 if other else 0 :]
        backend.truncate(0, prefix)
        for i, token in enumerate(tokens[prefix:]):
            backend.decode([BatchEntry(0, token, prefix + i, True)])
            if not np.array_equal(backend.output_logits(1)[0], batched[i]):
                return False
        return True
    finally:
        for slot in lengths:
            backend.clear(slot)
