"""A chat run's output: each choice's text split into reasoning, content and tool calls, as
it streams (:func:`events`) or whole (:func:`answers`, the same events gathered)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

from server.engine.types import TokenEvent, TokenLogprob
from server.services.generation import Run, check_finish, normal_finish
from server.services.reasoning import ThinkSplitter
from server.services.tools import CallDelta, ParsedCall

ChatFinish = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ChatAnswer:
    """One choice, whole: ``content`` is None when the choice is only tool calls."""

    index: int
    content: str | None
    calls: list[ParsedCall]
    finish_reason: ChatFinish
    logprobs: tuple[TokenLogprob, ...] = ()
    # The thinking split from the answer; None when the model's output is not split.
    reasoning: str | None = None
    # The stop string that ended the answer, if one did.
    stop_sequence: str | None = None


@dataclass(frozen=True)
class ChatEvent:
    """A piece of one choice as it streams: content, pieces of tool calls, the logprobs of
    tokens now complete, and at the end its finish reason."""

    index: int
    content: str = ""
    calls: tuple[CallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: ChatFinish | None = None
    reasoning: str = ""
    stop_sequence: str | None = None
    # At the end: how many of the calls streamed are whole (the first ones; a call cut off
    # is not one, and a whole answer leaves it out).
    whole_calls: int = 0


async def answers(run: Run) -> list[ChatAnswer]:
    """Every choice run to its end, split into reasoning, content and tool calls: the
    same events a stream gets (:func:`events`), gathered."""
    gathered = [_Gathered(index) for index in range(len(run.jobs))]
    async with contextlib.aclosing(events(run)) as stream:
        async for event in stream:
            gathered[event.index].add(event)
    return [choice.answer(thinks=run.think_start is not None) for choice in gathered]


async def events(run: Run) -> AsyncGenerator[ChatEvent, None]:
    """Every choice's pieces as they come; an abnormal end raises (check_finish)."""
    tools = run.tools
    parsers = [tools.parser() if tools else None for _ in run.jobs]
    splits = _Splits(run)
    written: list[list[str]] = [[] for _ in run.jobs]
    ids: list[list[int]] = [[] for _ in run.jobs]
    shown = [False for _ in run.jobs]  # content shown: the answer is not only calls
    async for index, event in run.events():
        reasoning, text = splits.feed(index, event)
        parser = parsers[index]
        content, calls = parser.feed(text) if parser else (text, [])
        if run.remember is not None:
            written[index].append(text)
            ids[index] += event.token_ids
        if event.finish_reason is not None and parser is not None:
            content += parser.finish(partial_as_content=False)
        shown[index] = shown[index] or bool(content.strip())
        if content or reasoning or event.logprobs or calls:
            yield ChatEvent(index, content, tuple(calls), event.logprobs, reasoning=reasoning)
        if event.finish_reason is not None:
            check_finish(event)
            reason: ChatFinish = normal_finish(event.finish_reason)
            if parser is not None and parser.calls and reason == "stop":
                reason = "tool_calls"
                if run.remember is not None and not shown[index]:
                    run.remember("".join(written[index]), ids[index])
            yield ChatEvent(
                index,
                finish_reason=reason,
                stop_sequence=event.stop_sequence,
                whole_calls=len(parser.calls) if parser is not None else 0,
            )


class _Gathered:
    """One choice's stream events gathered into its whole answer."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        # Per call index: its id, its name, the pieces of its arguments.
        self.calls: dict[int, tuple[str, str, list[str]]] = {}
        self.finish: ChatFinish = "stop"
        self.stop_sequence: str | None = None

    def add(self, event: ChatEvent) -> None:
        self.content.append(event.content)
        self.reasoning.append(event.reasoning)
        self.logprobs += event.logprobs
        for delta in event.calls:
            if delta.index not in self.calls:
                self.calls[delta.index] = (delta.id or "", delta.name or "", [])
            self.calls[delta.index][2].append(delta.arguments)
        if event.finish_reason is not None:
            self.finish, self.stop_sequence = event.finish_reason, event.stop_sequence
            for index in [i for i in self.calls if i >= event.whole_calls]:
                del self.calls[index]

    def answer(self, *, thinks: bool) -> ChatAnswer:
        content: str | None = "".join(self.content)
        if self.calls and not (content or "").strip():
            content = None
        return ChatAnswer(
            self.index,
            content,
            [
                ParsedCall(call_id, name, "".join(arguments))
                for call_id, name, arguments in (self.calls[i] for i in sorted(self.calls))
            ],
            self.finish,
            tuple(self.logprobs),
            "".join(self.reasoning) if thinks else None,
            self.stop_sequence,
        )


class _Splits:
    """Each choice's thinking split from its answer (when the run's model thinks in tags),
    counting the tokens spent thinking into the run."""

    def __init__(self, run: Run) -> None:
        self._run = run
        thinking = run.think_start
        self._splitters = (
            []
            if thinking is None
            else [ThinkSplitter(thinking=thinking, markers=run.think_markers) for _ in run.jobs]
        )

    def feed(self, index: int, event: TokenEvent) -> tuple[str, str]:
        """The reasoning and the content of ``event``'s text."""
        if not self._splitters:
            return "", event.text
        splitter = self._splitters[index]
        was_thinking = splitter.thinking
        reasoning, content = splitter.feed(event.text)
        if event.finish_reason is not None:
            more_reasoning, more_content = splitter.finish()
            reasoning, content = reasoning + more_reasoning, content + more_content
        if event.token_ids and (was_thinking or reasoning):
            self._run.reasoning_tokens += len(event.token_ids)
        return reasoning, content
