"""Rendering chat messages to a prompt with the model's own Jinja chat template.

Templates come from GGUF metadata (``tokenizer.chat_template``) or the model's config, i.e.
from files a user downloaded: they run in jinja2's immutable sandbox, so a template can format
text but cannot reach Python internals or mutate the data it is given.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.errors import ChatTemplateError, UnsupportedFeatureError


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(
        f"the model's chat template rejected the messages: {message}", param="messages"
    )


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may refer to."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        # HF templates use `tojson` with non-ASCII text; keep it readable, as transformers does.
        env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": False}
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"the model's chat template is not valid Jinja: {exc}") from exc
        self.bos_token = bos_token
        self.eos_token = eos_token
        # Templates written for tool use read a `tools` variable; others ignore it, and get
        # Hearth's fallback tool prompt instead (services/tools.py).
        self.knows_tools = "tools" in source

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """``extra`` adds variables (a request's ``chat_template_kwargs``); it never replaces
        the ones above."""
        variables = {
            **{
                k: v
                for k, v in (extra or {}).items()
                if k.isidentifier() and k not in _RESERVED and k not in self._template.globals
            },
            "messages": list(messages),
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "tools": tools,
        }
        try:
            return self._template.render(**variables)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(
                f"the model's chat template could not render these messages: {exc}",
                param="messages",
            ) from exc


# Variables a request may not set through chat_template_kwargs.
_RESERVED = frozenset(
    {"self", "messages", "add_generation_prompt", "bos_token", "eos_token", "tools"}
)


def message_to_template_dict(role: str, content: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """Flatten one OpenAI message for a template: text parts joined into one string."""
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.get("type") != "text" or part.get("text") is None:
                raise UnsupportedFeatureError(
                    f"message content parts of type '{part.get('type')}' are not supported; "
                    "send text parts only",
                    param="messages",
                )
            texts.append(part["text"])
        content = "".join(texts)
    message: dict[str, Any] = {"role": role, "content": content if content is not None else ""}
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
