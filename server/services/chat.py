"""OpenAI chat completions: messages through the chat template to the engine and back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator

from server.errors import ChatTemplateMissingError, UnsupportedFeatureError
from server.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
)
from server.protocol.common import Usage
from server.registry import ModelHandle, ModelRegistry
from server.services.generation import (
    PreparedRun,
    RunLimits,
    check_finish,
    choice_jobs,
    collect,
    merged,
    openai_finish_reason,
    usage_of,
)
from server.services.sampling import completion_budget, sampling_params
from server.services.templates import ChatTemplate, message_to_template_dict


class ChatService:
    """Builds, runs and shapes chat completions."""

    def __init__(self, registry: ModelRegistry, limits: RunLimits) -> None:
        self._registry = registry
        self._limits = limits
        self._templates: dict[str, ChatTemplate] = {}

    async def prepare(self, request: ChatCompletionRequest, *, owner: str) -> PreparedRun:
        """Validate, render and tokenize; every error here is raised before any byte is sent."""
        _reject_unsupported(request)
        handle = await self._registry.get(request.model)
        template = self._template_for(handle)
        messages = [
            message_to_template_dict(
                m.role,
                [p.model_dump() for p in m.content] if isinstance(m.content, list) else m.content,
                {"name": m.name, "tool_calls": m.tool_calls, "tool_call_id": m.tool_call_id},
            )
            for m in request.messages
        ]
        prompt = template.render(messages, add_generation_prompt=True)
        bos = template.bos_token
        add_bos = handle.adds_bos and not (bos and prompt.startswith(bos))
        tokens = await asyncio.to_thread(handle.tokenize, prompt, add_special=add_bos)
        requested = request.max_completion_tokens or request.max_tokens
        budget = completion_budget(
            requested,
            handle.config.defaults.max_tokens,
            len(tokens),
            handle.n_ctx,
            param="messages",
        )
        sampling = sampling_params(request, handle.config.defaults)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        jobs = choice_jobs(
            request_id,
            0,
            tokens,
            budget,
            sampling,
            request,
            owner=owner,
            deadline=self._limits.deadline(),
        )
        return PreparedRun(request_id, handle, jobs, prompt_token_count=len(tokens))

    async def complete(self, run: PreparedRun) -> ChatCompletion:
        results = await collect(run)
        choices = [
            ChatChoice(
                index=r.index,
                message=AssistantMessage(content=r.text),
                finish_reason=openai_finish_reason(r.finish_reason),
            )
            for r in results
        ]
        return ChatCompletion(
            id=run.request_id,
            created=run.created,
            model=run.model,
            choices=choices,
            usage=usage_of(run),
        )

    async def stream(
        self, run: PreparedRun, *, include_usage: bool
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
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
        async for index, event in merged(run):
            if event.text:
                yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(content=event.text))])
            if event.finish_reason is not None:
                check_finish(event)
                reason = openai_finish_reason(event.finish_reason)
                yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)])
        if include_usage:
            yield chunk([], usage_of(run))

    def _template_for(self, handle: ModelHandle) -> ChatTemplate:
        template = self._templates.get(handle.name)
        if template is None:
            if handle.chat_template_source is None:
                raise ChatTemplateMissingError(
                    f"model '{handle.name}' has no chat template (it is a base model): use "
                    "/v1/completions, or set chat_template for it in the model config",
                    param="model",
                )
            template = ChatTemplate(
                handle.chat_template_source,
                bos_token=handle.special_token_text("bos"),
                eos_token=handle.special_token_text("eos"),
            )
            self._templates[handle.name] = template
        return template


def _reject_unsupported(request: ChatCompletionRequest) -> None:
    if request.logprobs:
        raise UnsupportedFeatureError("logprobs are not supported yet", param="logprobs")
    if request.tools:
        raise UnsupportedFeatureError("tools are not supported yet", param="tools")
    if request.response_format is not None and request.response_format.get("type") != "text":
        raise UnsupportedFeatureError(
            "only response_format {'type': 'text'} is supported yet", param="response_format"
        )
