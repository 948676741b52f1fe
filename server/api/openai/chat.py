"""POST /v1/chat/completions: OpenAI's chat wire format to the one pipeline and back."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request

from server.api.deps import State
from server.api.openai.common import OpenAIAdapter, sampling_of, serve_openai
from server.api.openai.logprobs import chat_logprobs
from server.api.openapi_errors import GENERATION_RESPONSES
from server.errors import InvalidRequestError
from server.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    FunctionCall,
    FunctionCallDelta,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
)
from server.protocol.common import CompletionTokensDetails, PromptTokensDetails, Usage
from server.services.generation import Caller, Run, RunUsage
from server.services.spec import (
    FunctionTool,
    GenerationSpec,
    OutputFormat,
    PastCall,
    ToolChoice,
    Turn,
)

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=GENERATION_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: State
) -> Any:
    return await serve_openai(ChatAdapter(body, state), request, state)


class ChatAdapter(OpenAIAdapter[ChatCompletionRequest]):
    path = "/chat/completions"

    async def prepare(self, caller: Caller) -> Run:
        return await self.state.chat.prepare(chat_spec(self.body), caller)

    async def answer(self, run: Run) -> ChatCompletion:
        choices = [
            ChatChoice(
                index=a.index,
                message=AssistantMessage(
                    content=a.content,
                    tool_calls=[
                        ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                        for c in a.calls
                    ]
                    or None,
                    reasoning_content=a.reasoning or None,
                    reasoning=a.reasoning or None,
                ),
                logprobs=chat_logprobs(a.logprobs) if run.wants_logprobs else None,
                finish_reason=a.finish_reason,
            )
            for a in await self.state.chat.answers(run)
        ]
        return ChatCompletion(
            id=run.request_id,
            created=run.created,
            model=run.model,
            choices=choices,
            usage=openai_usage(run.usage()),
        )

    async def chunks(self, run: Run) -> AsyncGenerator[ChatCompletionChunk, None]:
        def chunk(
            choices: list[ChatChunkChoice], usage: Usage | None = None
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=run.request_id,
                created=run.created,
                model=run.model,
                choices=choices,
                usage=usage,
            )

        for i in range(len(run.jobs)):
            yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
        async for event in self.state.chat.events(run):
            index = event.index
            logprobs = (
                chat_logprobs(event.logprobs) if run.wants_logprobs and event.logprobs else None
            )
            if event.reasoning:
                delta = ChatDelta(reasoning_content=event.reasoning, reasoning=event.reasoning)
                yield chunk([ChatChunkChoice(index=index, delta=delta)])
            if event.content or logprobs:
                delta = ChatDelta(content=event.content)
                yield chunk([ChatChunkChoice(index=index, delta=delta, logprobs=logprobs)])
            for call in event.calls:
                part = ToolCallDelta(
                    index=call.index,
                    id=call.id,
                    type="function" if call.id else None,
                    function=FunctionCallDelta(name=call.name, arguments=call.arguments),
                )
                yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(tool_calls=[part]))])
            if event.finish_reason is not None:
                done = ChatChunkChoice(
                    index=index, delta=ChatDelta(), finish_reason=event.finish_reason
                )
                yield chunk([done])
        if self.body.include_usage:
            yield chunk([], openai_usage(run.usage()))


def openai_usage(usage: RunUsage) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
        completion_tokens_details=(
            None
            if usage.reasoning_tokens is None
            else CompletionTokensDetails(reasoning_tokens=usage.reasoning_tokens)
        ),
    )


def chat_spec(body: ChatCompletionRequest) -> GenerationSpec:
    """The request in the pipeline's own form."""
    return GenerationSpec(
        model=body.model,
        messages=turns_of(body.messages),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        sampling=sampling_of(
            body, body.logit_bias, (body.top_logprobs or 0) if body.logprobs else None
        ),
        n=body.n,
        tools=tools_of(body.tools),
        tool_choice=tool_choice_of(body),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        output=output_of(body.response_format),
        template_kwargs=template_kwargs(body.chat_template_kwargs, body.reasoning_effort),
        priority=body.priority,
        speculative=body.speculative,
        keep_alive=body.keep_alive_seconds,
        user=body.user,
    )


def turns_of(messages: list[ChatMessage]) -> tuple[Turn, ...]:
    return tuple(
        Turn(
            role=m.role,
            content=(
                [p.model_dump() for p in m.content] if isinstance(m.content, list) else m.content
            ),
            name=m.name,
            tool_calls=tuple(
                PastCall(c.function.name, c.function.arguments, c.id) for c in m.tool_calls or ()
            ),
            tool_call_id=m.tool_call_id,
        )
        for m in messages
    )


def tools_of(tools: list[Tool] | None) -> tuple[FunctionTool, ...]:
    return tuple(
        FunctionTool(
            t.function.name, t.function.description, t.function.parameters, t.function.strict
        )
        for t in tools or ()
    )


def tool_choice_of(body: ChatCompletionRequest) -> ToolChoice | None:
    choice = body.tool_choice
    if choice is None:
        return None
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("function", choice.function.name)
    return ToolChoice(choice)


def output_of(response_format: ResponseFormat | None) -> OutputFormat | None:
    if response_format is None:
        return None
    if response_format.type != "json_schema":
        return OutputFormat(response_format.type)
    if response_format.json_schema is None:
        raise InvalidRequestError(
            "response_format of type json_schema needs a json_schema object",
            param="response_format.json_schema",
        )
    json_schema = response_format.json_schema
    return OutputFormat("json_schema", json_schema.json_schema or {}, json_schema.strict is True)


def template_kwargs(kwargs: dict[str, Any] | None, reasoning_effort: str | None) -> dict[str, Any]:
    """Variables for the chat template: the request's own, and its reasoning effort."""
    extra = dict(kwargs or {})
    if reasoning_effort is not None:
        extra.setdefault("reasoning_effort", reasoning_effort)
    return extra
