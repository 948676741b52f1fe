"""OpenAI text completions: raw prompts (text or token ids) to the engine and back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace

from server.engine.types import GenerationRequest
from server.errors import InvalidRequestError, UnsupportedFeatureError
from server.handle import Lease, ModelHandle
from server.protocol.completions import Completion, CompletionChoice, CompletionRequest
from server.registry import ModelRegistry
from server.services.generation import (
    Caller,
    PreparedRun,
    RunLimits,
    check_finish,
    check_prompt_length,
    check_token_ids,
    choice_jobs,
    collect,
    merged,
    openai_finish_reason,
    released_on_error,
    usage_of,
)
from server.services.logprobs import completion_logprobs
from server.services.prep import PrepExecutor
from server.services.sampling import completion_budget, logit_bias_pairs, sampling_params

# OpenAI's default length for /v1/completions when max_tokens is left out.
OPENAI_DEFAULT_MAX_TOKENS = 16


@dataclass
class _Prompt:
    text: str  # what echo prints
    tokens: list[int]


class CompletionService:
    """Builds, runs and shapes text completions."""

    def __init__(self, registry: ModelRegistry, limits: RunLimits, prep: PrepExecutor) -> None:
        self._registry = registry
        self._limits = limits
        self._prep = prep

    async def prepare(
        self, request: CompletionRequest, caller: Caller
    ) -> tuple[PreparedRun, list[str]]:
        """Validate and tokenize. Returns the run and, per choice, the echo prefix."""
        _reject_unsupported(request)
        lease = await self._registry.checkout(
            request.model,
            keep_alive=request.keep_alive_seconds,
            may_shorten=caller.may_shorten_keep_alive,
        )
        with released_on_error(lease) as handle:
            return await self._prepare(request, caller, lease, handle)

    async def _prepare(
        self, request: CompletionRequest, caller: Caller, lease: Lease, handle: ModelHandle
    ) -> tuple[PreparedRun, list[str]]:
        prompts = await self._prep.run(
            _tokenize_prompts, handle, request.prompt, markup=request.parse_special
        )
        default = handle.config.defaults.max_tokens or OPENAI_DEFAULT_MAX_TOKENS
        sampling = replace(
            sampling_params(request, handle.config.defaults),
            logit_bias=logit_bias_pairs(request.logit_bias, handle.n_vocab),
            logprobs=request.logprobs,
        )
        request_id = f"cmpl-{uuid.uuid4().hex}"
        jobs: list[GenerationRequest] = []
        echoes: list[str] = []
        deadline = self._limits.deadline()
        key_cap = caller.cap_per_job(request.n * len(prompts))
        for prompt in prompts:
            budget = completion_budget(
                request.max_tokens,
                default,
                len(prompt.tokens),
                handle.n_ctx,
                param="prompt",
                caps=(handle.config.max_tokens_cap, key_cap),
            )
            jobs += choice_jobs(
                request_id,
                len(jobs),
                prompt.tokens,
                budget,
                sampling,
                request,
                owner=caller.owner,
                deadline=deadline,
                cache_scope=caller.cache_scope,
            )
            echoes += [prompt.text if request.echo else ""] * request.n
        prompt_tokens = sum(len(p.tokens) for p in prompts)
        run = PreparedRun(
            request_id, lease, jobs, prompt_token_count=prompt_tokens, meter=caller.meter
        )
        return run, echoes

    async def complete(self, run: PreparedRun, echoes: list[str]) -> Completion:
        results = await collect(run)
        return Completion(
            id=run.request_id,
            created=run.created,
            model=run.model,
            choices=[
                CompletionChoice(
                    index=r.index,
                    text=echoes[r.index] + r.text,
                    logprobs=(
                        completion_logprobs(r.logprobs, len(echoes[r.index]))
                        if run.wants_logprobs
                        else None
                    ),
                    finish_reason=openai_finish_reason(r.finish_reason),
                )
                for r in results
            ],
            usage=usage_of(run),
        )

    async def stream(
        self, run: PreparedRun, echoes: list[str], *, include_usage: bool
    ) -> AsyncGenerator[Completion, None]:
        def chunk(choices: list[CompletionChoice], usage: bool = False) -> Completion:
            return Completion(
                id=run.request_id,
                created=run.created,
                model=run.model,
                choices=choices,
                usage=usage_of(run) if usage else None,
            )

        pending_echo = list(echoes)
        offsets = [len(echo) for echo in echoes]  # where each choice's next token starts
        async for index, event in merged(run):
            text = pending_echo[index] + event.text
            pending_echo[index] = ""
            logprobs = None
            if run.wants_logprobs and event.logprobs:
                logprobs = completion_logprobs(event.logprobs, offsets[index])
                offsets[index] += sum(len(e.text) for e in event.logprobs)
            reason = None
            if event.finish_reason is not None:
                check_finish(event)
                reason = openai_finish_reason(event.finish_reason)
            if text or logprobs or reason:
                choice = CompletionChoice(
                    index=index, text=text, logprobs=logprobs, finish_reason=reason
                )
                yield chunk([choice])
        if include_usage:
            yield chunk([], usage=True)


def _tokenize_prompts(
    handle: ModelHandle, prompt: str | list[str] | list[int] | list[list[int]], *, markup: bool
) -> list[_Prompt]:
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


def _reject_unsupported(request: CompletionRequest) -> None:
    if request.logprobs is not None and request.echo:
        raise UnsupportedFeatureError(
            "logprobs of the prompt (echo with logprobs) are not supported", param="logprobs"
        )
    if request.suffix:
        raise UnsupportedFeatureError("suffix (insertion) is not supported", param="suffix")
    if request.best_of is not None and request.best_of != request.n:
        raise UnsupportedFeatureError("best_of other than n is not supported", param="best_of")
