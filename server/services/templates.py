"""Rendering chat messages to a prompt with the model's own Jinja chat template.

Templates come from GGUF metadata (``tokenizer.chat_template``) or the model's config, i.e.
from files a user downloaded: they run in a jinja2 sandbox (services/template_sandbox.py)
that cannot reach Python internals, on a deep copy of the request's data, within a time and
size budget. Whatever goes wrong inside a template is the request's 400
(:class:`ChatTemplateError`), never a 500.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jinja2
from jinja2 import meta

from server.errors import ChatTemplateError
from server.services.content import content_text
from server.services.template_sandbox import RenderLimits, TemplateSandbox


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may refer to."""

    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        limits: RenderLimits | None = None,
    ) -> None:
        self._env = TemplateSandbox(limits or RenderLimits())
        try:
            self._template = self._env.compile_template(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"the model's chat template is not valid Jinja: {exc}") from exc
        except Exception as exc:
            raise ChatTemplateError(
                f"the model's chat template could not be compiled: {_describe(exc)}"
            ) from exc
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            reads = meta.find_undeclared_variables(self._env.parse(source))
        except jinja2.TemplateSyntaxError:
            reads = set()
        # Firefunction's reads its tools as `functions` (JSON text) and the date as `datetime`.
        self._functions = "functions" in reads and "tools" not in reads
        self._datetime = "datetime" in reads
        # Templates written for tool use read a `tools` variable; others ignore it, and get
        # Hearth's fallback tool prompt instead (services/tools.py).
        self.knows_tools = "tools" in source or self._functions
        # Some write the calls of past turns in their own format but read no `tools` (DeepSeek
        # V3.1, R1's distills): their tools are described in the system prompt.
        self.knows_calls = self.knows_tools or "tool_calls" in source
        self.describes_parameters = False  # set at the first tool list that needs it
        self.arguments_as_text = False  # while the probes render
        self.content_as_text = False
        if self.knows_calls:
            self.content_as_text = self._wants_text_content()
            self.arguments_as_text = self._wants_text_arguments()
        else:
            self.content_as_text = True

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """``extra`` adds variables (a request's ``chat_template_kwargs``); it never replaces
        the ones above. Raises :class:`ChatTemplateError` for anything the template does
        wrong or refuses (its ``raise_exception``)."""
        try:
            # A template may mutate lists and dicts (Kimi's queue of tool-call ids): give it
            # its own copy, so the caller's messages and tools come back as they went in.
            variables = copy.deepcopy(
                {
                    # Today's date where the template reads one (a request may set its own).
                    **({"datetime": time.strftime("%b %d %Y")} if self._datetime else {}),
                    **{
                        k: v
                        for k, v in (extra or {}).items()
                        if k.isidentifier()
                        and k not in _RESERVED
                        and k not in self._template.globals
                    },
                    "messages": list(messages),
                    "add_generation_prompt": add_generation_prompt,
                    "bos_token": self.bos_token,
                    "eos_token": self.eos_token,
                    # No tools: `tools` stays undefined, as llama.cpp leaves it, so that a
                    # template's `for tool in tools` loops over nothing instead of failing.
                    **({"tools": tools} if tools is not None else {}),
                    **self._extra_variables(tools),
                }
            )
            if self.arguments_as_text:
                _arguments_to_text(variables["messages"])
            if self.content_as_text:
                for message in variables["messages"]:
                    if isinstance(message, dict) and message.get("content", "") is None:
                        message["content"] = ""
            described = self.describes_parameters
            if described and "tools" in variables:
                _describe_parameters(variables["tools"])
            with self._env.budget():
                try:
                    return self._template.render(**variables)
                except jinja2.UndefinedError as exc:
                    # Command R+'s writes every parameter's description, and fails on a
                    # tool whose parameters have none (as clients often send them): from
                    # then on, such a parameter gets an empty one.
                    if "description" not in str(exc) or described or not tools:
                        raise
                self.describes_parameters = True
            return self.render(
                messages, add_generation_prompt=add_generation_prompt, tools=tools, extra=extra
            )
        except ChatTemplateError:
            raise
        except Exception as exc:  # a template's bug or budget, whatever it raised
            raise ChatTemplateError(
                f"the model's chat template could not render these messages: {_describe(exc)}",
                param="messages",
            ) from exc

    def _extra_variables(self, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        """What a template reads under another name: its tools as ``functions`` (a JSON list
        of their specs, empty without tools; Firefunction's)."""
        if not self._functions:
            return {}
        specs = [t.get("function", t) for t in tools or []]
        return {"functions": json.dumps(specs, ensure_ascii=False)}

    def _wants_text_content(self) -> bool:
        """Whether a turn of calls without content gets "" rather than None (null, as OpenAI
        clients send it). "" wherever it writes the calls: some templates take None but
        write the conversation around it otherwise (Apertus leaves a result's bracket open),
        others fail on it or write "None". None only where "" leaves the calls out and None
        writes them (R1's distills write calls only for null content)."""
        for arguments in _PROBE_ARGUMENTS:
            for result in (False, True):
                if self._probe("", arguments, result) is not None:
                    return True
        return not any(
            self._probe(None, arguments, result) is not None
            for arguments in _PROBE_ARGUMENTS
            for result in (False, True)
        )

    def _wants_text_arguments(self) -> bool:
        """Whether the template can only write tool-call arguments given as a JSON string.

        Hearth passes arguments as a dict, as Hugging Face templates expect; a few (functionary
        v3.2, R1's distills) concatenate them as text. Like llama.cpp, find out by rendering a
        call both ways."""
        content = "" if self.content_as_text else None
        for arguments in _PROBE_ARGUMENTS:
            if self._probe(content, arguments) is not None:
                return isinstance(arguments, str)
        return False

    def _probe(
        self, content: str | None, arguments: dict[str, str] | str, result: bool = False
    ) -> str | None:
        """A call with these content and arguments rendered (as given; with ``result``,
        followed by its result), or None if refused or written without the call."""
        probe: list[dict[str, Any]] = [
            {"role": "user", "content": "question"},
            {
                "role": "assistant",
                "content": content,
                "tool_calls": [
                    {
                        "id": "call00001",
                        "type": "function",
                        "function": {"name": "tool1", "arguments": arguments},
                    }
                ],
            },
        ]
        if result:
            probe.append({"role": "tool", "content": "result", "tool_call_id": "call00001"})
        try:
            text = self.render(probe, add_generation_prompt=False, tools=_PROBE_TOOLS)
        except ChatTemplateError:
            return None
        return text if "hearthprobe" in text else None


_PROBE_ARGUMENTS: tuple[dict[str, str] | str, ...] = (
    {"arg": "hearthprobe"},
    '{"arg": "hearthprobe"}',
)
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "tool1",
            "description": "A tool.",
            "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}},
        },
    }
]


def _describe_parameters(tools: Any) -> None:
    """Give every tool and parameter without a description an empty one."""
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            continue
        function.setdefault("description", "")
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        for spec in properties.values() if isinstance(properties, dict) else []:
            if isinstance(spec, dict):
                spec.setdefault("description", "")


def _arguments_to_text(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and not isinstance(function.get("arguments"), str):
                function["arguments"] = json.dumps(function.get("arguments"), ensure_ascii=False)


def _describe(exc: BaseException) -> str:
    """The error with the template line it happened on (jinja2 rewrites tracebacks so that
    template frames carry the template's line numbers)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" (template line {line})" if line is not None else ""
    return f"{type(exc).__name__}: {exc}{where}"


# Variables a request may not set through chat_template_kwargs.
_RESERVED = frozenset(
    {"self", "messages", "add_generation_prompt", "bos_token", "eos_token", "tools"}
)


def message_to_template_dict(role: str, content: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """Flatten one OpenAI message for a template: text parts joined into one string."""
    content = content_text(content, param="messages", part_param=False)
    if content is None or (content == "" and role == "assistant" and extra.get("tool_calls")):
        # A turn of calls keeps null content, as OpenAI clients send it (a template that
        # cannot take it gets "": ChatTemplate.content_as_text).
        content = None if extra.get("tool_calls") and role == "assistant" else ""
    message: dict[str, Any] = {"role": role, "content": content}
    message.update({k: v for k, v in extra.items() if v is not None})
    return message


T = TypeVar("T")


def escaped(value: T, escape: Callable[[str], str]) -> T:
    """``value`` (messages or tools, as a template receives them) with every string in it,
    keys included, passed through ``escape``: the request's text can then never become one
    of the model's control tokens, whatever the template does with it."""
    if isinstance(value, str):
        return escape(value)  # type: ignore[return-value]
    if isinstance(value, list):
        return [escaped(item, escape) for item in value]  # type: ignore[return-value]
    if isinstance(value, dict):
        return {escaped(k, escape): escaped(v, escape) for k, v in value.items()}  # type: ignore[return-value]
    return value
