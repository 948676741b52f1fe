"""From a request's sampling fields and the model's defaults to engine parameters."""

from __future__ import annotations

import math
from collections.abc import Mapping

from server.engine.types import SamplingParams
from server.errors import ContextLengthExceededError, InvalidRequestError
from server.models.config import SamplingDefaults
from server.services.spec import Sampling


def sampling_params(request: Sampling, defaults: SamplingDefaults) -> SamplingParams:
    """Each field the request sets wins; the rest come from the model's defaults."""

    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    return SamplingParams(
        temperature=pick(request.temperature, defaults.temperature),
        top_p=pick(request.top_p, defaults.top_p),
        top_k=int(pick(request.top_k, defaults.top_k)),
        min_p=pick(request.min_p, defaults.min_p),
        presence_penalty=pick(request.presence_penalty, defaults.presence_penalty),
        frequency_penalty=pick(request.frequency_penalty, defaults.frequency_penalty),
        repeat_penalty=pick(request.repeat_penalty, defaults.repeat_penalty),
        seed=request.seed,
    )


def completion_budget(
    requested: int | None,
    default: int | None,
    prompt_tokens: int,
    n_ctx: int,
    *,
    param: str,
    caps: tuple[int | None, ...] = (),
    clamp: bool = False,
) -> int:
    """How many tokens may be generated. The prompt must leave room for at least one token,
    and an explicit max_tokens must fit beside the prompt (as OpenAI answers), unless
    ``clamp``: then it is a ceiling, lowered to the room left. ``caps`` (the model's and the
    API key's max_tokens_cap) lower the result, whatever was asked."""
    room = n_ctx - prompt_tokens
    if room < 1:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {n_ctx} tokens, but the prompt has "
            f"{prompt_tokens} tokens. Shorten the prompt.",
            param=param,
            limit=n_ctx,
            prompt_tokens=prompt_tokens,
        )
    if requested is not None and requested > room and not clamp:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} "
            "for the completion). Reduce the prompt or max_tokens.",
            param="max_tokens",
        )
    budget = requested if requested is not None else default
    budget = room if budget is None else min(budget, room)
    return min([budget, *(cap for cap in caps if cap is not None)])


def logit_bias_pairs(
    bias: Mapping[str, float] | None, n_vocab: int
) -> tuple[tuple[int, float], ...]:
    """``{"token id": bias}`` as engine pairs; -100 bans a token outright."""
    if not bias:
        return ()
    pairs: list[tuple[int, float]] = []
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError(
                f"logit_bias keys must be token ids; got {key!r}", param="logit_bias"
            ) from None
        if not 0 <= token < n_vocab:
            raise InvalidRequestError(
                f"logit_bias token id {token} is outside the vocabulary [0, {n_vocab})",
                param="logit_bias",
            )
        pairs.append((token, -math.inf if value <= -100 else value))
    return tuple(pairs)
