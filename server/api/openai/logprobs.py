"""Shaping the engine's per-token log-probabilities into OpenAI's two formats."""

from __future__ import annotations

from collections.abc import Sequence

from server.engine.types import TokenLogprob
from server.protocol.chat import ChoiceLogprobs, TokenLogprobEntry, TopLogprobEntry
from server.protocol.completions import CompletionLogprobs


def _piece_text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(entries: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    """Chat's ``logprobs.content``: each token's text (which joins to the message content),
    its raw bytes, and its top alternatives."""
    return ChoiceLogprobs(
        content=[
            TokenLogprobEntry(
                token=e.text,
                logprob=e.logprob,
                bytes=list(e.piece),
                top_logprobs=[
                    TopLogprobEntry(
                        token=_piece_text(t.piece), logprob=t.logprob, bytes=list(t.piece)
                    )
                    for t in e.top
                ],
            )
            for e in entries
        ]
    )


def completion_logprobs(entries: Sequence[TokenLogprob], text_offset: int) -> CompletionLogprobs:
    """The legacy completions format; ``text_offset`` is where the first token starts in the
    choice's text (after any echoed prompt)."""
    offsets: list[int] = []
    for e in entries:
        offsets.append(text_offset)
        text_offset += len(e.text)
    return CompletionLogprobs(
        tokens=[e.text for e in entries],
        token_logprobs=[e.logprob for e in entries],
        top_logprobs=[_with_sampled(e) for e in entries],
        text_offset=offsets,
    )


def _with_sampled(entry: TokenLogprob) -> dict[str, float]:
    """The top alternatives and, as OpenAI always includes it, the sampled token (so
    ``logprobs: 0`` gives the sampled token alone, and ``logprobs: k`` up to k + 1)."""
    top = {_piece_text(t.piece): t.logprob for t in entry.top}
    top.setdefault(_piece_text(entry.piece), entry.logprob)
    return top
