"""Text completions: raw prompts (text or token ids) to the engine; the adapter shapes the
output."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from server.engine.types import GenerationRequest
from server.errors import InvalidRequestError
from server.loaded_model import Lease, ModelHandle
from server.registry import ModelRegistry
from server.services.generation import (
    Caller,
    Run,
    RunLimits,
    check_prompt_length,
    check_token_ids,
    choice_jobs,
    released_on_error,
)
from server.services.prep import PrepExecutor
from server.services.sampling import completion_budget, logit_bias_pairs, sampling_params
from server.services.spec import GenerationSpec, Prompt

# A prompt this short is tokenized on the event loop, not on a preparation thread.
INLINE_PROMPT_CHARS = 4096


@dataclass
class _Prompt:
    text: str  # what echo prints
    tokens: list[int]


class CompletionService:
    """Prepares text completions."""

    def __init__(self, registry: ModelRegistry, limits: RunLimits, prep: PrepExecutor) -> None:
        self._registry = registry
        self._limits = limits
        self._prep = prep

    async def prepare(
        self, spec: GenerationSpec, caller: Caller, lease: Lease | None = None
    ) -> Run:
        """Validate and tokenize; the run's ``echoes`` hold, per choice, the echoed prompt.
        ``lease``: the model already checked out for this run (it is the run's from now on).
        """
        if lease is None:
            lease = await self._registry.checkout(
                spec.model, keep_alive=spec.keep_alive, may_shorten=caller.may_shorten_keep_alive
            )
        with released_on_error(lease) as handle:
            return await self._prepare(spec, caller, lease, handle)

    async def _prepare(
        self, spec: GenerationSpec, caller: Caller, lease: Lease, handle: ModelHandle
    ) -> Run:
        assert spec.prompt is not None
        small = isinstance(spec.prompt, str) and len(spec.prompt) <= INLINE_PROMPT_CHARS
        prompts = await self._prep.run_unless_small(
            small, _tokenize_prompts, handle, spec.prompt, markup=spec.parse_special
        )
        default = handle.config.defaults.max_tokens or spec.fallback_max_tokens
        sampling = replace(
            sampling_params(spec.sampling, handle.config.defaults),
            logit_bias=logit_bias_pairs(spec.sampling.logit_bias, handle.n_vocab),
            logprobs=spec.sampling.logprobs,
        )
        request_id = f"cmpl-{uuid.uuid4().hex}"
        jobs: list[GenerationRequest] = []
        echoes: list[str] = []
        deadline = self._limits.deadline()
        key_cap = caller.cap_per_job(spec.n * len(prompts))
        for prompt in prompts:
            budget = completion_budget(
                spec.max_tokens,
                default,
                len(prompt.tokens),
                min(handle.n_ctx, spec.context_limit or handle.n_ctx),
                param="prompt",
                caps=(handle.config.max_tokens_cap, key_cap),
                clamp=spec.clamp_max_tokens,
            )
            jobs += choice_jobs(
                request_id,
                len(jobs),
                prompt.tokens,
                budget,
                sampling,
                spec,
                owner=caller.owner,
                deadline=deadline,
                default_stop=handle.config.defaults.stop,
                cache_scope=caller.cache_scope,
            )
            echoes += [prompt.text if spec.echo else ""] * spec.n
        return Run(
            request_id,
            lease,
            jobs,
            prompt_token_count=sum(len(p.tokens) for p in prompts),
            ledger=caller.ledger,
            echoes=echoes,
        )


def _tokenize_prompts(handle: ModelHandle, prompt: Prompt, *, markup: bool) -> list[_Prompt]:
    """Each prompt's tokens. Text is data unless the request opted in to ``parse_special``:
    then its special-token text (``<|im_start|>``) becomes control tokens, as for a prompt
    written in the model's own chat format."""
    if isinstance(prompt, str):
        items: list[str | list[int]] = [prompt]
    elif all(isinstance(p, int) for p in prompt):
        items = [list(prompt)]  # type: ignore[arg-type]
    else:
        items = list(prompt)  # type: ignore[arg-type]
    prompts: list[_Prompt] = []
    for item in items:
        if isinstance(item, str):
            check_prompt_length(item, handle, param="prompt")
            tokens = handle.tokenize(item, add_special=handle.adds_bos, markup=markup)
            text = item
        else:
            check_token_ids(item, handle.n_vocab, param="prompt")
            tokens, text = list(item), handle.detokenize(item)
        if not tokens:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        prompts.append(_Prompt(text, tokens))
    return prompts
