"""POST /v1/completions: OpenAI's text completion wire format to the one pipeline and back."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request

from server.api.deps import State
from server.api.openai.chat import openai_usage
from server.api.openai.common import OpenAIAdapter, sampling_of, serve_openai
from server.api.openai.logprobs import completion_logprobs
from server.api.openapi_errors import GENERATION_RESPONSES
from server.errors import UnsupportedFeatureError
from server.protocol.completions import Completion, CompletionChoice, CompletionRequest
from server.services.generation import Caller, Run, check_finish, normal_finish
from server.services.spec import GenerationSpec

router = APIRouter(tags=["completions"])

# OpenAI's default length for /v1/completions when max_tokens is left out.
OPENAI_DEFAULT_MAX_TOKENS = 16


@router.post("/v1/completions", response_model=Completion, responses=GENERATION_RESPONSES)
async def create_completion(body: CompletionRequest, request: Request, state: State) -> Any:
    return await serve_openai(CompletionAdapter(body, state), request, state)


class CompletionAdapter(OpenAIAdapter[CompletionRequest]):
    path = "/completions"

    async def prepare(self, caller: Caller) -> Run:
        return await self.state.completions.prepare(completion_spec(self.body), caller)

    async def answer(self, run: Run) -> Completion:
        echoes = run.echoes
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
                    finish_reason=normal_finish(r.finish_reason),
                )
                for r in await run.results()
            ],
            usage=openai_usage(run.usage()),
        )

    async def chunks(self, run: Run) -> AsyncGenerator[Completion, None]:
        def chunk(choices: list[CompletionChoice], usage: bool = False) -> Completion:
            return Completion(
                id=run.request_id,
                created=run.created,
                model=run.model,
                choices=choices,
                usage=openai_usage(run.usage()) if usage else None,
            )

        pending_echo = list(run.echoes)
        offsets = [len(echo) for echo in run.echoes]  # where each choice's next token starts
        async for index, event in run.events():
            text = pending_echo[index] + event.text
            pending_echo[index] = ""
            logprobs = None
            if run.wants_logprobs and event.logprobs:
                logprobs = completion_logprobs(event.logprobs, offsets[index])
                offsets[index] += sum(len(e.text) for e in event.logprobs)
            reason = None
            if event.finish_reason is not None:
                check_finish(event)
                reason = normal_finish(event.finish_reason)
            if text or logprobs or reason:
                choice = CompletionChoice(
                    index=index, text=text, logprobs=logprobs, finish_reason=reason
                )
                yield chunk([choice])
        if self.body.include_usage:
            yield chunk([], usage=True)


def completion_spec(body: CompletionRequest) -> GenerationSpec:
    """The request in the pipeline's own form; what Hearth cannot do is a 400 here."""
    if body.logprobs is not None and body.echo:
        raise UnsupportedFeatureError(
            "logprobs of the prompt (echo with logprobs) are not supported", param="logprobs"
        )
    if body.suffix:
        raise UnsupportedFeatureError("suffix (insertion) is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise UnsupportedFeatureError("best_of other than n is not supported", param="best_of")
    return GenerationSpec(
        model=body.model,
        prompt=body.prompt,
        max_tokens=body.max_tokens,
        fallback_max_tokens=OPENAI_DEFAULT_MAX_TOKENS,
        sampling=sampling_of(body, body.logit_bias, body.logprobs),
        n=body.n,
        priority=body.priority,
        speculative=body.speculative,
        keep_alive=body.keep_alive_seconds,
        user=body.user,
        echo=body.echo,
        parse_special=body.parse_special,
    )
