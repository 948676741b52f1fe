"""Chat: a conversation through the model's chat template to the engine, and the model's
output back as content and tool calls (family-neutral; the adapters shape it)."""

from __future__ import annotations

import functools
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from server.engine.grammar import SchemaNotSupported, json_object_grammar, json_schema_grammar
from server.engine.grammar_limits import GrammarLimitError
from server.engine.relax import relax_schema
from server.engine.types import Grammar
from server.errors import ChatTemplateMissingError, InvalidRequestError
from server.loaded_model import Lease, ModelHandle
from server.registry import ModelRegistry
from server.services.call_tokens import CallTokens, tokenize_with
from server.services.chat_output import answers, events
from server.services.formats import ChatFormat, choose_format
from server.services.formats.layout import CallLayout
from server.services.generation import (
    Caller,
    Run,
    RunLimits,
    check_prompt_length,
    choice_jobs,
    released_on_error,
)
from server.services.prep import PrepExecutor
from server.services.reasoning import opens_thinking, reasoning_markers
from server.services.sampling import completion_budget, logit_bias_pairs, sampling_params
from server.services.spec import GenerationSpec, OutputFormat, PastCall, Turn
from server.services.templates import ChatTemplate, escaped, message_to_template_dict
from server.services.tools import (
    ToolPlan,
    fallback_tools_prompt,
    parse_arguments,
    plan_tools,
    render_call,
)

logger = logging.getLogger(__name__)


class ChatService:
    """Prepares and runs chat generations."""

    def __init__(self, registry: ModelRegistry, limits: RunLimits, prep: PrepExecutor) -> None:
        self._registry = registry
        self._limits = limits
        self._prep = prep
        self._templates: dict[str, ChatTemplate] = {}
        self._formats: dict[str, ChatFormat] = {}
        self._call_tokens: dict[tuple[str, int], CallTokens] = {}

    async def prepare(
        self, spec: GenerationSpec, caller: Caller, lease: Lease | None = None
    ) -> Run:
        """Validate, render and tokenize; every error here is raised before any byte is sent.
        ``lease``: the model already checked out for this run (it is the run's from now on).
        """
        assert spec.messages is not None
        self._limits.check_counts(len(spec.messages), len(spec.tools))
        if lease is None:
            lease = await self._registry.checkout(
                spec.model, keep_alive=spec.keep_alive, may_shorten=caller.may_shorten_keep_alive
            )
        with released_on_error(lease) as handle:
            return await self._prep.run(self._prepare, spec, caller, lease, handle)

    def _prepare(
        self, spec: GenerationSpec, caller: Caller, lease: Lease, handle: ModelHandle
    ) -> Run:
        """The work of :meth:`prepare`, on a preparation thread."""
        assert spec.messages is not None
        tools = plan_tools(
            spec.tools,
            spec.tool_choice,
            parallel=spec.parallel_tool_calls,
            fmt=self.format_for(handle),
        )
        grammar = _output_grammar(spec.output)
        if tools is not None:
            if grammar is not None:
                raise InvalidRequestError(
                    "response_format json_object/json_schema cannot be combined with tools "
                    "unless tool_choice is 'none'",
                    param="response_format",
                )
            grammar = tools.grammar
        prompt = self.render(
            handle, spec.messages, tools, extra=spec.template_kwargs, param=spec.messages_param
        )
        fmt = self.format_for(handle)
        tokens = self._tokenize(handle, prompt, spec.messages)
        budget = completion_budget(
            spec.max_tokens,
            handle.config.defaults.max_tokens,
            len(tokens),
            min(handle.n_ctx, spec.context_limit or handle.n_ctx),
            param=spec.messages_param,
            caps=(handle.config.max_tokens_cap, caller.cap_per_job(spec.n)),
            clamp=spec.clamp_max_tokens,
        )
        if grammar is not None and (problem := handle.check_grammar(grammar)) is not None:
            raise InvalidRequestError(
                problem, param="response_format" if tools is None else "tools"
            )
        sampling = replace(
            sampling_params(spec.sampling, handle.config.defaults),
            logit_bias=logit_bias_pairs(spec.sampling.logit_bias, handle.n_vocab),
            grammar=grammar,
            logprobs=spec.sampling.logprobs,
        )
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        jobs = choice_jobs(
            request_id,
            0,
            tokens,
            budget,
            sampling,
            spec,
            owner=caller.owner,
            deadline=self._limits.deadline(),
            default_stop=handle.config.defaults.stop,
            cache_scope=caller.cache_scope,
        )
        run = Run(
            request_id,
            lease,
            jobs,
            prompt_token_count=len(tokens),
            ledger=caller.ledger,
            tools=tools,
        )
        # A grammar that holds the output to its form from the first token leaves nothing
        # to split; a lazy one (tools with "auto") lets the model think first.
        if tools is not None and fmt.layout is not None:
            run.remember = functools.partial(self._remember, handle)
        free = grammar is None or bool(grammar.triggers)
        markers = reasoning_markers(
            handle.config.reasoning,
            handle.chat_template_source,
            self.format_for(handle).family.reasoning,
        )
        if free and markers is not None:
            run.think_markers = markers
            run.think_start = opens_thinking(prompt, markers)
        return run

    def prompt_tokens(
        self,
        handle: ModelHandle,
        messages: Sequence[Turn],
        tools: ToolPlan | None,
        *,
        add_generation_prompt: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """The conversation through the model's chat template, as tokens (blocking)."""
        prompt = self.render(
            handle, messages, tools, add_generation_prompt=add_generation_prompt, extra=extra
        )
        return self._tokenize(handle, prompt, messages)

    def render(
        self,
        handle: ModelHandle,
        messages: Sequence[Turn],
        tools: ToolPlan | None,
        *,
        add_generation_prompt: bool = True,
        extra: Mapping[str, Any] | None = None,
        param: str = "messages",
    ) -> str:
        """The conversation through the model's chat template, as text (blocking); ``param``
        names the request's field that holds it, in errors."""
        template = self._template_for(handle)
        system = handle.config.system
        if system and not any(m.role in ("system", "developer") for m in messages):
            messages = [Turn("system", system), *messages]  # the model's own (Ollama's SYSTEM)
        fmt = self.format_for(handle)
        calls: dict[str, str] = {}
        rendered, template_tools = _template_messages(
            messages,
            template,
            tools,
            fmt.layout,
            in_content=fmt.in_content,
            escape=handle.escape,
            placeholders=calls,
        )
        # Everything the request put in is data: none of it may become a control token (but
        # past calls written into their turn's text, whose markup is the model's own).
        prompt = template.render(
            _with_calls(escaped(rendered, handle.escape), calls),
            add_generation_prompt=add_generation_prompt,
            tools=escaped(template_tools, handle.escape),
            extra=escaped(dict(extra or {}), handle.escape),
        )
        check_prompt_length(prompt, handle, param=param)
        return prompt

    def _tokenize(
        self, handle: ModelHandle, prompt: str, messages: Sequence[Turn] = ()
    ) -> list[int]:
        """The prompt's tokens: earlier tool-call answers the model wrote as it wrote them
        (:mod:`server.services.call_tokens`), the rest as the tokenizer splits it."""
        bos = self._template_for(handle).bos_token
        add_bos = handle.adds_bos and not (bos and prompt.startswith(bos))

        def tokenize(text: str, first: bool) -> list[int]:
            return handle.tokenize(text, add_special=add_bos and first, markup=True)

        layout = self.format_for(handle).layout
        calls = _past_calls(messages, layout) if layout is not None else []
        if not calls:
            return tokenize(prompt, True)
        return tokenize_with(prompt, calls, self._call_tokens_of(handle), tokenize)

    def _call_tokens_of(self, handle: ModelHandle) -> CallTokens:
        # Per model instance: a model reloaded from another file has another vocabulary.
        key = (handle.name, id(handle.backend))
        memory = self._call_tokens.get(key)
        if memory is None:
            memory = self._call_tokens[key] = CallTokens()
        return memory

    def _remember(self, handle: ModelHandle, text: str, ids: Sequence[int]) -> None:
        """Keep the tokens of an answer that is only tool calls, less its end-of-generation
        tokens, when they are exactly its text."""
        kept = list(ids)
        while kept and handle.backend.is_end_of_generation(kept[-1]):
            kept.pop()
        if kept and all(0 <= t < handle.n_vocab for t in kept) and handle.detokenize(kept) == text:
            self._call_tokens_of(handle).remember(text, kept)

    # A run's output, whole or as it streams (services/chat_output.py).
    answers = staticmethod(answers)
    events = staticmethod(events)

    def format_for(self, handle: ModelHandle) -> ChatFormat:
        """How ``handle``'s model writes tool calls: its family's format, learned from its chat
        template, or the house format (``chat_format`` overrides the choice)."""
        fmt = self._formats.get(handle.name)
        if fmt is None:
            template = self._template_for(handle)
            fmt = choose_format(
                template,
                handle.chat_template_source or "",
                handle.config.chat_format,
                end_of_turn=functools.partial(_end_of_turn, handle),
            )
            logger.info("model '%s' writes tool calls in the %s format", handle.name, fmt.name)
            self._formats[handle.name] = fmt
        return fmt

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


def _past_calls(messages: Sequence[Turn], layout: CallLayout) -> list[str]:
    """The text of each earlier answer that was only tool calls, as ``layout`` writes it."""
    texts = []
    for message in messages:
        if message.role != "assistant" or not message.tool_calls:
            continue
        if message_to_template_dict("assistant", message.content, {})["content"]:
            continue
        try:
            texts.append(
                layout.text(
                    [
                        (c.name, c.id or "", _arguments_text(c.arguments, layout))
                        for c in message.tool_calls
                    ]
                )
            )
        except (ValueError, TypeError, AssertionError, RecursionError):
            continue  # arguments that are not JSON (or nest too deep), more calls than fit
    return texts


def _with_calls(messages: list[dict[str, Any]], calls: Mapping[str, str]) -> list[dict[str, Any]]:
    """``messages`` with each call placeholder replaced by its call's text."""
    if not calls:
        return messages
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and "\ue000" in content:
            for key, text in calls.items():
                content = content.replace(key, text)
            message = {**message, "content": content}
        out.append(message)
    return out


def _calls_in_text(
    calls: Sequence[PastCall],
    layout: CallLayout,
    escape: Callable[[str], str],
    placeholders: dict[str, str] | None,
) -> str:
    """A past turn's calls as its text, in ``layout`` (its names and arguments escaped); a
    placeholder for that text where ``placeholders`` collects them. Arguments that are not
    JSON (a client's history may hold anything) are written as Hearth's call text instead."""
    try:
        text = layout.text(
            [
                (escape(c.name), c.id or "", escape(_arguments_text(c.arguments, layout)))
                for c in calls
            ]
        )
    except (ValueError, TypeError, RecursionError):
        return "\n".join(render_call(c.name, parse_arguments(c.arguments)) for c in calls)
    if placeholders is None:
        return text
    key = f"\ue000{secrets.token_hex(8)}\ue001"
    placeholders[key] = text
    return key


def _arguments_text(arguments: Any, layout: CallLayout) -> str:
    """A past call's arguments as the JSON text the model wrote: as sent back, or the value
    written as the grammar made the model write it."""
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, ensure_ascii=layout.ascii, separators=layout.separators)


def _end_of_turn(handle: ModelHandle, text: str) -> str:
    """The tail of ``text`` made of the model's end-of-generation tokens."""
    tokens = handle.tokenize(text, add_special=False, markup=True)
    n = 0
    while n < len(tokens) and handle.backend.is_end_of_generation(tokens[len(tokens) - 1 - n]):
        n += 1
    tail = b"".join(handle.backend.token_piece(t, special=True) for t in tokens[len(tokens) - n :])
    tail_text = tail.decode("utf-8", errors="replace")
    return tail_text if n and text.endswith(tail_text) else ""


def _output_grammar(output: OutputFormat | None) -> Grammar | None:
    if output is None or output.kind == "text":
        return None
    if output.kind == "json_object":
        return json_object_grammar()
    schema: Any = dict(output.schema or {})
    try:
        if not output.strict:
            schema, relaxed = relax_schema(schema)
            if relaxed:
                logger.info(
                    "response schema relaxed to what a grammar enforces: %s", "; ".join(relaxed)
                )
        return json_schema_grammar(schema)
    except (SchemaNotSupported, GrammarLimitError) as exc:
        raise InvalidRequestError(
            f"the JSON schema cannot be enforced: {exc}", param="response_format.json_schema"
        ) from exc


def _template_messages(
    messages: Sequence[Turn],
    template: ChatTemplate,
    tools: ToolPlan | None,
    layout: CallLayout | None = None,
    *,
    in_content: bool = False,
    escape: Callable[[str], str] = lambda text: text,
    placeholders: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages as the template receives them, and its ``tools`` variable.

    A template that knows tools gets the tool calls and results as they are (with arguments
    as values, as Hugging Face templates expect). For one that does not, calls in the history
    are written in Hearth's call format, tool results become user turns in
    ``<tool_response>`` tags, and the tools are described in the system prompt. A template
    that writes past calls in a format of its own (``layout``) but reads no ``tools``
    (DeepSeek V3.1) gets the calls and results as they are and the tools in the system
    prompt, with its own call form. With ``in_content`` (a template that leaves past calls
    out: LFM2, Granite 3.3) a turn's calls are written into its text, in ``layout``: the
    layout's own text is the model's markup, not the request's, so it must not be escaped as
    the request's text is; with ``placeholders`` the text holds a placeholder for each call
    (its values already passed through ``escape``), to be put in after escaping."""
    native = template.knows_tools or (template.knows_calls and layout is not None)
    rendered: list[dict[str, Any]] = []
    for m in messages:
        content: Any = m.content
        role = m.role
        extra: dict[str, Any] = {"name": m.name, "tool_call_id": m.tool_call_id}
        if in_content and m.tool_calls and layout is not None:
            text = message_to_template_dict(role, content, {})["content"]
            written = _calls_in_text(m.tool_calls, layout, escape, placeholders)
            content = f"{text}{written}" if text else written
        elif native:
            extra["tool_calls"] = [
                {
                    **({"id": c.id} if c.id is not None else {}),
                    "type": "function",
                    "function": {"name": c.name, "arguments": parse_arguments(c.arguments)},
                }
                for c in m.tool_calls
            ] or None
        elif m.tool_calls:
            text = message_to_template_dict(role, content, {})["content"]
            written = "\n".join(
                render_call(c.name, parse_arguments(c.arguments)) for c in m.tool_calls
            )
            content = f"{text}\n{written}" if text else written
        elif role == "tool":
            text = message_to_template_dict(role, content, {})["content"]
            role, content = "user", f"<tool_response>\n{text}\n</tool_response>"
        rendered.append(message_to_template_dict(role, content, extra))
    if tools is None or template.knows_tools:
        return rendered, tools.tools if tools is not None else None
    descriptions = {
        t["function"]["name"]: t["function"].get("description", "") for t in tools.tools
    }
    form = None
    if native and layout is not None:
        example = layout.text([("FUNCTION_NAME", "call_0", '{"ARGUMENT": "VALUE"}')])
        form = example[len(layout.preamble) :]
    prompt = fallback_tools_prompt(tools.functions, descriptions, form)
    if rendered and rendered[0]["role"] in ("system", "developer"):
        rendered[0] = {**rendered[0], "content": f"{rendered[0]['content']}\n\n{prompt}"}
    else:
        rendered.insert(0, {"role": "system", "content": prompt})
    return rendered, None
