"""OpenAI chat completions: messages through the chat template to the engine and back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any

from server.engine.grammar import SchemaNotSupported, json_object_grammar, json_schema_grammar
from server.engine.types import Grammar
from server.errors import ChatTemplateMissingError, InvalidRequestError
from server.handle import Lease, ModelHandle
from server.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    FinishReason,
    FunctionCallDelta,
    ResponseFormat,
    ToolCallDelta,
)
from server.protocol.common import Usage
from server.registry import ModelRegistry
from server.services.generation import (
    Caller,
    PreparedRun,
    RunLimits,
    check_finish,
    check_prompt_length,
    choice_jobs,
    collect,
    merged,
    openai_finish_reason,
    released_on_error,
    usage_of,
)
from server.services.logprobs import chat_logprobs
from server.services.prep import PrepExecutor
from server.services.sampling import completion_budget, logit_bias_pairs, sampling_params
from server.services.templates import ChatTemplate, escaped, message_to_template_dict
from server.services.tools import (
    ToolCallParser,
    ToolPlan,
    fallback_tools_prompt,
    parse_arguments,
    plan_tools,
    render_call,
)


class ChatService:
    """Builds, runs and shapes chat completions."""

    def __init__(self, registry: ModelRegistry, limits: RunLimits, prep: PrepExecutor) -> None:
        self._registry = registry
        self._limits = limits
        self._prep = prep
        self._templates: dict[str, ChatTemplate] = {}

    async def prepare(self, request: ChatCompletionRequest, caller: Caller) -> PreparedRun:
        """Validate, render and tokenize; every error here is raised before any byte is sent."""
        self._limits.check_counts(len(request.messages), len(request.tools or ()))
        lease = await self._registry.checkout(
            request.model,
            keep_alive=request.keep_alive_seconds,
            may_shorten=caller.may_shorten_keep_alive,
        )
        with released_on_error(lease) as handle:
            return await self._prep.run(self._prepare, request, caller, lease, handle)

    def _prepare(
        self, request: ChatCompletionRequest, caller: Caller, lease: Lease, handle: ModelHandle
    ) -> PreparedRun:
        """The work of :meth:`prepare`, on a preparation thread."""
        tools = plan_tools(request)
        grammar = _response_format_grammar(request.response_format)
        if tools is not None:
            if grammar is not None:
                raise InvalidRequestError(
                    "response_format json_object/json_schema cannot be combined with tools "
                    "unless tool_choice is 'none'",
                    param="response_format",
                )
            grammar = tools.grammar
        tokens = self.prompt_tokens(handle, request.messages, tools)
        requested = request.max_completion_tokens or request.max_tokens
        budget = completion_budget(
            requested,
            handle.config.defaults.max_tokens,
            len(tokens),
            handle.n_ctx,
            param="messages",
            caps=(handle.config.max_tokens_cap, caller.cap_per_job(request.n)),
        )
        if grammar is not None and (problem := handle.check_grammar(grammar)) is not None:
            raise InvalidRequestError(
                problem, param="response_format" if tools is None else "tools"
            )
        sampling = replace(
            sampling_params(request, handle.config.defaults),
            logit_bias=logit_bias_pairs(request.logit_bias, handle.n_vocab),
            grammar=grammar,
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        )
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        jobs = choice_jobs(
            request_id,
            0,
            tokens,
            budget,
            sampling,
            request,
            owner=caller.owner,
            deadline=self._limits.deadline(),
            cache_scope=caller.cache_scope,
        )
        return PreparedRun(
            request_id,
            lease,
            jobs,
            prompt_token_count=len(tokens),
            tools=tools,
            meter=caller.meter,
        )

    def prompt_tokens(
        self,
        handle: ModelHandle,
        messages: list[ChatMessage],
        tools: ToolPlan | None,
        *,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """The conversation through the model's chat template, as tokens (blocking)."""
        template = self._template_for(handle)
        rendered, template_tools = _template_messages(messages, template, tools)
        # Everything the request put in is data: none of it may become a control token.
        prompt = template.render(
            escaped(rendered, handle.escape),
            add_generation_prompt=add_generation_prompt,
            tools=escaped(template_tools, handle.escape),
        )
        check_prompt_length(prompt, handle, param="messages")
        bos = template.bos_token
        add_bos = handle.adds_bos and not (bos and prompt.startswith(bos))
        return handle.tokenize(prompt, add_special=add_bos, markup=True)

    async def complete(self, run: PreparedRun) -> ChatCompletion:
        results = await collect(run)
        choices = []
        for r in results:
            content: str | None = r.text
            calls = None
            finish: FinishReason = openai_finish_reason(r.finish_reason)
            if run.tools is not None:
                parser = ToolCallParser(run.tools.functions)
                head, _ = parser.feed(r.text)
                # A call cut off by max_tokens is not returned, as markup or as a call.
                content = head + parser.finish(partial_as_content=finish != "length")
                calls = parser.calls or None
                if calls:
                    content = content if content.strip() else None
                    finish = "tool_calls" if finish == "stop" else finish
            choices.append(
                ChatChoice(
                    index=r.index,
                    message=AssistantMessage(content=content, tool_calls=calls),
                    logprobs=chat_logprobs(r.logprobs) if run.wants_logprobs else None,
                    finish_reason=finish,
                )
            )
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

        tools = run.tools
        parsers = [ToolCallParser(tools.functions) if tools else None for _ in run.jobs]
        for i in range(len(run.jobs)):
            yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
        async for index, event in merged(run):
            parser = parsers[index]
            content, calls = parser.feed(event.text) if parser else (event.text, [])
            if event.finish_reason is not None and parser is not None:
                content += parser.finish(partial_as_content=False)
            logprobs = (
                chat_logprobs(event.logprobs) if run.wants_logprobs and event.logprobs else None
            )
            if content or logprobs:
                delta = ChatDelta(content=content)
                yield chunk([ChatChunkChoice(index=index, delta=delta, logprobs=logprobs)])
            for call in calls:
                part = ToolCallDelta(
                    index=call.index,
                    id=call.id,
                    type="function" if call.id else None,
                    function=FunctionCallDelta(name=call.name, arguments=call.arguments),
                )
                yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(tool_calls=[part]))])
            if event.finish_reason is not None:
                check_finish(event)
                reason: FinishReason = openai_finish_reason(event.finish_reason)
                if parser is not None and parser.calls and reason == "stop":
                    reason = "tool_calls"
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


def _response_format_grammar(response_format: ResponseFormat | None) -> Grammar | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return json_object_grammar()
    spec = response_format.json_schema
    if spec is None:
        raise InvalidRequestError(
            "response_format of type json_schema needs a json_schema object",
            param="response_format.json_schema",
        )
    try:
        return json_schema_grammar(spec.json_schema or {})
    except SchemaNotSupported as exc:
        raise InvalidRequestError(
            f"the JSON schema cannot be enforced: {exc}", param="response_format.json_schema"
        ) from exc


def _template_messages(
    messages: list[ChatMessage], template: ChatTemplate, tools: ToolPlan | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages as the template receives them, and its ``tools`` variable.

    A template that knows tools gets OpenAI's tool messages as they are (with arguments as
    values, as Hugging Face templates expect). For one that does not, calls in the history are
    written in Hearth's call format, tool results become user turns in ``<tool_response>``
    tags, and the tools are described in the system prompt."""
    native = template.knows_tools
    rendered: list[dict[str, Any]] = []
    for m in messages:
        content: Any = (
            [p.model_dump() for p in m.content] if isinstance(m.content, list) else m.content
        )
        role = m.role
        calls = [c.model_dump(exclude_none=True) for c in m.tool_calls or []]
        extra: dict[str, Any] = {"name": m.name, "tool_call_id": m.tool_call_id}
        if native:
            extra["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": parse_arguments(f.arguments)}}
                for c, f in zip(calls, [c.function for c in m.tool_calls or []], strict=True)
            ] or None
        elif calls:
            text = message_to_template_dict(role, content, {})["content"]
            written = "\n".join(
                render_call(c.function.name, parse_arguments(c.function.arguments))
                for c in m.tool_calls or []
            )
            content = f"{text}\n{written}" if text else written
        elif role == "tool":
            text = message_to_template_dict(role, content, {})["content"]
            role, content = "user", f"<tool_response>\n{text}\n</tool_response>"
        rendered.append(message_to_template_dict(role, content, extra))
    if tools is None or native:
        return rendered, tools.tools if tools is not None else None
    descriptions = {
        t["function"]["name"]: t["function"].get("description", "") for t in tools.tools
    }
    prompt = fallback_tools_prompt(tools.functions, descriptions)
    if rendered and rendered[0]["role"] in ("system", "developer"):
        rendered[0] = {**rendered[0], "content": f"{rendered[0]['content']}\n\n{prompt}"}
    else:
        rendered.insert(0, {"role": "system", "content": prompt})
    return rendered, None
