"""The one internal form of a generation request, whatever API family it came in.

An adapter (``server/api/<family>``) parses its family's wire types and builds a
:class:`GenerationSpec`; the services below never see a family's field names. Conversation
turns are in the form chat templates expect (Hugging Face's: role, content, tool calls with
their arguments), which is what every family's messages map to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class PastCall:
    """A tool call an earlier assistant turn made."""

    name: str
    arguments: Any  # JSON text, or the value itself
    id: str | None = None


@dataclass(frozen=True)
class Turn:
    """One message of the conversation. ``content`` is text, or parts in the template form
    (``{"type": "text", "text": ...}``; only text parts are understood)."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: tuple[PastCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    strict: bool | None = None

    def template_form(self) -> dict[str, Any]:
        """The tool as chat templates take it (their ``tools`` variable)."""
        function = {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict,
        }
        return {
            "type": "function",
            "function": {k: v for k, v in function.items() if v is not None},
        }


@dataclass(frozen=True)
class ToolChoice:
    """``auto``: the model may call; ``required``: it must; ``function``: it must call
    ``name``; ``none``: it may not."""

    mode: Literal["auto", "none", "required", "function"]
    name: str | None = None


@dataclass(frozen=True)
class OutputFormat:
    """``json_object``: any JSON object; ``json_schema``: JSON matching ``schema``.

    ``strict``: the schema is a promise, refused where a keyword cannot be enforced; otherwise
    it is relaxed to what the grammar enforces (:mod:`server.engine.relax`)."""

    kind: Literal["text", "json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True)
class Sampling:
    """What the request set; ``None`` takes the model's default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Token id (as text, as JSON object keys are) -> bias; -100 or less bans the token.
    logit_bias: Mapping[str, float] | None = None
    # Report each token's log-probability with this many alternatives; None: don't.
    logprobs: int | None = None


# A completion prompt: text, texts, token ids, or lists of token ids.
Prompt = str | list[str] | list[int] | list[list[int]]


@dataclass(frozen=True)
class GenerationSpec:
    """A request to generate: a conversation (``messages``) or raw ``prompt``s, and how."""

    model: str
    messages: tuple[Turn, ...] | None = None
    prompt: Prompt | None = None
    # The request's field that holds the conversation, as errors name it (Responses: input).
    messages_param: str = "messages"
    max_tokens: int | None = None
    # The length when neither the request nor the model's defaults set one (None: all the
    # context leaves room for).
    fallback_max_tokens: int | None = None
    # max_tokens as a ceiling: more than the context leaves is cut to what it leaves, not a
    # 400 (Anthropic's and Ollama's clients send large fixed values, such as 32000).
    clamp_max_tokens: bool = False
    # The context the request may use, if less than the model's (Ollama's num_ctx).
    context_limit: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    n: int = 1
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    output: OutputFormat | None = None
    # Extra variables for the chat template (``enable_thinking``, ``reasoning_effort``, ...).
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Admission order among one owner's waiting requests.
    priority: int = 0
    keep_alive: float | None = None
    # The end user, where the family names one: the queue's owner when keys are off.
    user: str | None = None
    # Completions: return the prompt before the text; read special-token text as markup.
    echo: bool = False
    parse_special: bool = False
    # Prompt-lookup speculation for this request (off: plain decoding, step by step).
    speculative: bool = True
