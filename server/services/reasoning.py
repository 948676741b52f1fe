"""Reasoning output: the thinking a model writes in ``<think>...</think>`` split from its answer.

Models such as DeepSeek-R1, Qwen3 and their distills think before they answer, in tags; their
chat templates often open the block themselves (the prompt ends with ``<think>``), so the
output starts inside it. :class:`ThinkSplitter` takes the output as it streams and returns the
reasoning and the answer separately, exactly: a tag split across tokens is held back until it
is whole, and text that only looks like the start of a tag is released once it is not.
"""

from __future__ import annotations

from typing import Literal

from server.services.tools import partial_suffix

OPEN = "<think>"
CLOSE = "</think>"

ReasoningMode = Literal["auto", "think_tags", "none"]


def uses_think_tags(mode: ReasoningMode, template_source: str | None) -> bool:
    """Whether a model's output is split: ``auto`` when its chat template knows the tags."""
    if mode == "auto":
        return template_source is not None and OPEN in template_source and CLOSE in template_source
    return mode == "think_tags"


def opens_thinking(prompt: str) -> bool:
    """The rendered prompt ends inside a think block: the output starts as reasoning."""
    tail = prompt.rstrip()
    return tail.endswith(OPEN)


class ThinkSplitter:
    """Splits one choice's output into (reasoning, content), incrementally."""

    def __init__(self, *, thinking: bool) -> None:
        # "start": a block may still open; "think": inside it; "after": the block closed,
        # whitespace before the answer is dropped; "answer": all the rest is content.
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
        while self._buffer:
            if self._state == "start":
                stripped = self._buffer.lstrip()
                if stripped.startswith(OPEN):
                    self._buffer = stripped[len(OPEN) :]
                    self._state = "think"
                    self.reasoning_seen = True
                elif OPEN.startswith(stripped):  # may still become the opening tag
                    break
                else:
                    self._state = "answer"
            elif self._state == "think":
                end = self._buffer.find(CLOSE)
                if end < 0:
                    keep = partial_suffix(self._buffer, CLOSE)
                    reasoning.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                reasoning.append(self._buffer[:end])
                self._buffer = self._buffer[end + len(CLOSE) :]
                self._state = "after"
            elif self._state == "after":
                self._buffer = self._buffer.lstrip()
                if self._buffer:
                    self._state = "answer"
            else:
                content.append(self._buffer)
                self._buffer = ""
        return "".join(reasoning), "".join(content)

    def finish(self) -> tuple[str, str]:
        """The end of the output: what was held back is released where it belongs."""
        rest, self._buffer = self._buffer, ""
        if self._state == "think":
            return rest, ""
        if self._state == "after":
            return "", rest.lstrip()
        return "", rest
