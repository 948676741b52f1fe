"""Reasoning output: the thinking a model writes between its family's markers, split from its
answer.

Most thinking models write ``<think>...</think>`` (DeepSeek-R1, Qwen3, QwQ, Kimi); Mistral's
reasoning models ``[THINK]...[/THINK]``, Seed-OSS ``<seed:think>...</seed:think>``, Cohere's
``<|START_THINKING|>...<|END_THINKING|>``, gpt-oss its ``analysis`` channel, followed by the
answer in the ``final`` channel. Their chat templates often open the block themselves (the
prompt ends with the opening marker), so the output starts inside it. :class:`ThinkSplitter`
takes the output as it streams and returns the reasoning and the answer separately, exactly:
a marker split across tokens is held back until it is whole, and text that only looks like the
start of a marker is released once it is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from server.services.tools import partial_suffix

ReasoningMode = Literal["auto", "think_tags", "none"]


@dataclass(frozen=True)
class Markers:
    """What a model's thinking is written between, and the headers its answer may open with
    after it (gpt-oss's ``final`` channel), which are neither reasoning nor answer."""

    open: str
    close: str
    answer_headers: tuple[str, ...] = ()


THINK_TAGS = Markers("<think>", "</think>")
OPEN, CLOSE = THINK_TAGS.open, THINK_TAGS.close


def reasoning_markers(
    mode: ReasoningMode, template_source: str | None, family: Markers | None = None
) -> Markers | None:
    """The markers a model's output is split at, or None when it is not split: with ``auto``,
    its family's markers (or ``<think>`` tags) when its chat template writes them."""
    if mode == "none":
        return None
    if mode == "think_tags":
        return THINK_TAGS
    source = template_source or ""
    for markers in (family, THINK_TAGS):
        if markers is not None and markers.open in source and markers.close in source:
            return markers
    return None


def uses_think_tags(mode: ReasoningMode, template_source: str | None) -> bool:
    """Whether a model's output is split at ``<think>`` tags."""
    return reasoning_markers(mode, template_source) is not None


def opens_thinking(prompt: str, markers: Markers = THINK_TAGS) -> bool:
    """The rendered prompt ends inside a thinking block: the output starts as reasoning."""
    return prompt.rstrip().endswith(markers.open)


class ThinkSplitter:
    """Splits one choice's output into (reasoning, content), incrementally."""

    def __init__(self, *, thinking: bool, markers: Markers = THINK_TAGS) -> None:
        # "start": a block may still open; "think": inside it; "after": the block closed,
        # whitespace (and an answer header) before the answer is dropped; "answer": all the
        # rest is content.
        self._markers = markers
        self._state = "think" if thinking else "start"
        self._buffer = ""
        self.reasoning_seen = thinking

    @property
    def thinking(self) -> bool:
        return self._state == "think"

    def feed(self, text: str) -> tuple[str, str]:
        """Add output text; returns the reasoning and the content now safe to release."""
        self._buffer += text
        reasoning: list[str] = []
        content: list[str] = []
        opening, closing = self._markers.open, self._markers.close
        while self._buffer:
            if self._state == "start":
                stripped = self._buffer.lstrip()
                if stripped.startswith(opening):
                    self._buffer = stripped[len(opening) :]
                    self._state = "think"
                    self.reasoning_seen = True
                elif opening.startswith(stripped) or self._header_pending(stripped):
                    break  # may still become the opening marker or an answer header
                else:
                    self._buffer = self._without_header(stripped, self._buffer)
                    self._state = "answer"
            elif self._state == "think":
                end = self._buffer.find(closing)
                if end < 0:
                    keep = partial_suffix(self._buffer, closing)
                    reasoning.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                reasoning.append(self._buffer[:end])
                self._buffer = self._buffer[end + len(closing) :]
                self._state = "after"
            elif self._state == "after":
                self._buffer = self._buffer.lstrip()
                if not self._buffer or self._header_pending(self._buffer):
                    break
                self._buffer = self._without_header(self._buffer, self._buffer)
                self._state = "answer"
            else:
                content.append(self._buffer)
                self._buffer = ""
        return "".join(reasoning), "".join(content)

    def _header_pending(self, text: str) -> bool:
        """``text`` may still become one of the answer headers."""
        return any(h.startswith(text) and h != text for h in self._markers.answer_headers)

    def _without_header(self, stripped: str, text: str) -> str:
        """``text`` without the answer header ``stripped`` (its unindented form) opens with."""
        for header in self._markers.answer_headers:
            if stripped.startswith(header):
                return stripped[len(header) :]
        return text

    def finish(self) -> tuple[str, str]:
        """The end of the output: what was held back is released where it belongs."""
        rest, self._buffer = self._buffer, ""
        if self._state == "think":
            return rest, ""
        if self._state == "after":
            return "", rest.lstrip()
        return "", rest
