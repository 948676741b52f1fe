"""Command R+'s arguments, written as indented JSON (``tojson(indent=4)|indent(8)``): the
grammar takes exactly the text the template writes, at every depth, and no other spelling;
the text reads back as compact JSON. The grammar is checked by llama.cpp's own sampler."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest

from server.engine.grammar import FunctionSpec
from server.services.formats.calls import LayoutCallParser, layout_grammar
from server.services.formats.indented_args import Indented
from tests.conftest import model_file
from tests.services.test_formats import layout
from tests.services.test_template_corpus import MISSING, corpus

NAME = "CohereForAI-c4ai-command-r-plus-tool_use"
pytestmark = pytest.mark.skipif(NAME not in corpus(), reason=MISSING)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "options": {
            "type": "object",
            "properties": {
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "hourly": {"type": "boolean"},
                "note": {"type": "string"},
            },
            "required": ["unit", "hourly"],
        },
        "tags": {"type": "array", "items": {"type": "string"}},
        "extra": {"type": "object"},
        "choice": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "null"}]},
    },
    "required": ["city"],
    "$defs": {
        "point": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        }
    },
}
FUNCTIONS = [FunctionSpec("get_forecast", SCHEMA)]
ARGUMENTS = [
    {"city": "Zürich"},
    {"city": "Paris", "options": {"unit": "celsius", "hourly": True}, "tags": []},
    {
        "city": 'a "b"\n',
        "options": {"unit": "fahrenheit", "hourly": False, "note": "日本"},
        "tags": ["x", "y"],
        "extra": {"a": [1, 2.5, {"b": None, "c": {}}], "d": "e"},
        "choice": {"y": 3},
    },
    {"city": "Oslo", "extra": {}, "choice": None},  # (in the order the grammar writes)
]


@pytest.fixture(scope="module")
def vocab() -> Iterator[tuple[llama_cpp.Llama, Any]]:
    llm = llama_cpp.Llama(str(model_file("smollm2")), vocab_only=True, verbose=False)
    yield llm, llama_cpp.llama_model_get_vocab(llm._model.model)
    llm.close()


def accepts(vocab: tuple[llama_cpp.Llama, Any], gbnf: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets the model write ``text`` and then stop."""
    llm, handle = vocab
    sampler = llama_cpp.llama_sampler_init_grammar(handle, gbnf.encode(), b"root")
    assert sampler, "llama.cpp refused the grammar"
    try:
        tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
        for token in [*tokens, llm.token_eos()]:
            data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 1.0, 0.0))
            array = llama_cpp.llama_token_data_array(data, 1, -1, False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            if data[0].logit == float("-inf"):
                return False
            if token != llm.token_eos():
                llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


def test_the_template_writes_arguments_indented() -> None:
    chosen = layout(NAME)
    assert (chosen.dialect, chosen.form) == ("indented", Indented(4, 8))
    assert (
        chosen.syntax.write({"a": [1]})
        == '{\n            "a": [\n                1\n            ]\n        }'
    )


@pytest.mark.parametrize("arguments", ARGUMENTS)
def test_the_grammar_takes_the_templates_text_and_no_other_spelling(
    vocab: tuple[llama_cpp.Llama, Any], arguments: dict[str, Any]
) -> None:
    chosen = layout(NAME)
    grammar = layout_grammar(chosen, FUNCTIONS, "one", parallel=False).gbnf
    text = chosen.text([("get_forecast", "", json.dumps(arguments))])
    assert accepts(vocab, grammar, text)
    compact = text.replace(chosen.syntax.write(arguments), json.dumps(arguments))
    assert not accepts(vocab, grammar, compact)
    # One space too many at one depth is refused too.
    assert not accepts(vocab, grammar, text.replace("\n            ", "\n             ", 1))


def test_the_text_reads_back_as_compact_json() -> None:
    chosen = layout(NAME)
    for arguments in ARGUMENTS:
        text = chosen.text([("get_forecast", "", json.dumps(arguments))])
        parser = LayoutCallParser(chosen, FUNCTIONS)
        for ch in text:  # one character at a time
            assert parser.feed(ch)[0] == ""
        assert parser.finish() == ""
        assert [c.arguments for c in parser.calls] == [json.dumps(arguments, ensure_ascii=False)]


def test_arguments_that_are_not_an_object_or_nest_too_deep_are_refused() -> None:
    form = Indented(4, 8)
    for text in ("[1]", "3", "{", "[" * 100_000 + "]" * 100_000):
        with pytest.raises(ValueError):
            form.to_json(text)
    assert form.to_json('{\n    "a": 1\n}') == '{"a": 1}'
