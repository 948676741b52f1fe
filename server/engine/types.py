"""The engine boundary: the only types services and the engine exchange.

Plain dataclasses, no pydantic and no llama_cpp, so that both sides (and a fake engine in the
scheduler tests) can use them freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# "stop" and "length" are OpenAI's; the others end a request abnormally. "invalid": the
# request's own constraints left no token to choose (see SamplingDeadEnd).
FinishReason = Literal[
    "stop", "length", "cancelled", "error", "invalid", "queue_timeout", "deadline"
]


class SamplingDeadEnd(Exception):
    """No token may follow: the grammar allows none that ``logit_bias`` has not banned. The
    sequence ends; nothing the grammar refused is ever accepted into it (llama.cpp aborts the
    whole process on that)."""


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar the output must match.

    With ``triggers`` the grammar is lazy: output is free until one of these regular
    expressions matches the text so far, and from the start of that match (or of its first
    capturing group) the rest must match the grammar.
    """

    gbnf: str
    root: str = "root"
    triggers: tuple[str, ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens. ``temperature == 0`` means greedy."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    penalty_last_n: int = 64
    seed: int | None = None
    # (token id, bias added to its logit); -100 or less bans the token.
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: Grammar | None = None
    # Report each token's log-probability and this many top alternatives; None: don't.
    logprobs: int | None = None


@dataclass
class GenerationRequest:
    """One sequence to generate: a tokenized prompt and when to stop."""

    request_id: str
    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    # Who the request belongs to (API key or `user`); the queue is fair across owners.
    owner: str = ""
    priority: int = 0
    # time.monotonic() after which the request is abandoned (queued or running); None: never.
    deadline: float | None = None
    # Whose cached prompts it may reuse: "" shares with every request of this scope; an API
    # key's scope keeps its prompts (and what cached_tokens reveals) from other keys.
    cache_scope: str = ""
    # May guess tokens by prompt lookup (when the model's speculative settings allow it).
    speculative: bool = True


@dataclass(frozen=True)
class TopLogprob:
    token: int
    piece: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability (under the model, before sampling changes it).

    ``text`` is the part of the output this token accounts for: the ``text`` of a sequence's
    tokens joins to exactly the text it returns (a token that ends inside a UTF-8 character
    has ``""``, and the next one carries the character; a stop string is cut out).
    """

    token: int
    text: str
    piece: bytes
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """A piece of generated text, or the end of a sequence.

    ``text`` is always whole UTF-8 characters with any stop string removed. The last event of a
    sequence has ``finish_reason`` set; ``error`` explains a ``finish_reason == "error"``.
    """

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_seconds: float = 0.0
    # Prompt tokens whose KV was reused instead of computed (OpenAI's cached_tokens).
    cached_tokens: int = 0
    error: str | None = None
    # The stop string that ended the sequence (finish_reason "stop"; None: end of generation).
    stop_sequence: str | None = None
    # Prompt lookup, on a sequence's last event: tokens guessed, and those the model chose too.
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    # The tokens whose text is complete as of this event (only when logprobs were asked).
    logprobs: tuple[TokenLogprob, ...] = ()
