"""Chat formats: how each model family's template writes tool calls and reasoning, and so how
its model is made to write them (a grammar) and how they are read back (a parser).

A model's format is chosen once, when its template is first used: the family from the
template's text (or the model's ``chat_format`` setting), the call layout learned from the
template itself (:mod:`.layout`): arguments as JSON, parameter by parameter
(:mod:`.params`), in Gemma's syntax (:mod:`.gemma_args`), Python-style (:mod:`.pythonic_args`),
as indented JSON (:mod:`.indented_args`) or as an XML tree (:mod:`.xml_tree_args`). A
template that knows nothing of tools, or writes calls in a form no layout describes, gets
Hearth's house format: Hermes' ``<tool_call>`` JSON (in the system prompt where the template
reads no tools)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from server.engine.grammar import FunctionSpec, tool_call_grammar
from server.engine.types import Grammar
from server.services.formats.calls import LayoutCallParser, Mode, layout_grammar
from server.services.formats.families import (
    Family,
    command_r,
    deepseek,
    functionary,
    gemma,
    generic,
    glm,
    granite,
    harmony,
    hermes,
    kimi,
    lfm2,
    llama3,
    minimax,
    mistral,
    qwen3_coder,
    seed,
)
from server.services.formats.layout import CallLayout, learn_layout
from server.services.templates import ChatTemplate
from server.services.tools import ToolCallParser

# In the order they are tried: the first family whose pattern the template holds.
_MODULES: tuple[ModuleType, ...] = (
    harmony,
    gemma,
    seed,
    mistral,
    deepseek,
    kimi,
    command_r,
    functionary,
    qwen3_coder,
    glm,
    minimax,
    llama3,
    granite,
    lfm2,
    hermes,
    generic,
)
FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in _MODULES}
# chat_format values: a family's name, "house" (Hearth's format whatever the template), or
# "auto" (the family the template shows).
CHAT_FORMATS = ("auto", "house", *FAMILIES)


@dataclass(frozen=True)
class ChatFormat:
    """``layout`` None: the house format."""

    family: Family
    layout: CallLayout | None
    # The calls of past turns go into their turn's text (the template leaves them out).
    in_content: bool = False

    @property
    def name(self) -> str:
        return self.family.name if self.layout is not None else "house"

    @property
    def parallel(self) -> bool:
        """Whether a turn may hold several calls (not where the template refuses them)."""
        return self.layout is None or self.layout.parallel

    def grammar(self, functions: Sequence[FunctionSpec], mode: Mode, *, parallel: bool) -> Grammar:
        if self.layout is None:
            return tool_call_grammar(
                functions, parallel=parallel and mode != "one", lazy=mode == "auto"
            )
        return layout_grammar(self.layout, functions, mode, parallel=parallel)

    def parser(self, functions: Sequence[FunctionSpec]) -> ToolCallParser | LayoutCallParser:
        if self.layout is None:
            return ToolCallParser(functions)
        return LayoutCallParser(self.layout, functions)


HOUSE = ChatFormat(hermes.FAMILY, None)


def family_of(source: str) -> Family:
    return next(f for f in FAMILIES.values() if f.matches(source))


def choose_format(
    template: ChatTemplate,
    source: str,
    setting: str = "auto",
    *,
    end_of_turn: Callable[[str], str] = lambda text: "",
) -> ChatFormat:
    """The format of a model whose chat template is ``template`` (its text ``source``)."""
    if setting == "house":
        return HOUSE
    family = FAMILIES[setting] if setting != "auto" else family_of(source)
    layout = learn_layout(template, end_of_turn=end_of_turn)
    if layout is None and family.declared is not None and template.knows_tools:
        return ChatFormat(family, family.declared, in_content=True)
    return ChatFormat(family, layout)
