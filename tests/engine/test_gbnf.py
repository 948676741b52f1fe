"""The Python mirror of llama.cpp's grammar parser: it accepts what llama.cpp parses, refuses
what llama.cpp would refuse (with one line, never the grammar), and bounds the rest."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import llama_cpp
import pytest

from server.engine.gbnf import (
    MAX_ALTERNATIVES,
    MAX_GRAMMAR_BYTES,
    MAX_NESTING,
    GrammarRejected,
    gbnf_literal,
    validate_gbnf,
)
from server.engine.grammar import json_object_grammar, json_schema_grammar
from tests.conftest import model_file

VALID = [
    'root ::= "a"',
    'root ::= "a" | "b"\n',
    'root ::= ( "a" | [b-d] )* "\\x41\\u00e9\\n" .\n',
    'root ::= x{2,5} y{3} z{1,}\nx ::= "x"\ny ::= [^"\\\\]\nz ::= "z"?',
    'root ::= "a" # a comment\n',
    'root ::= (\n  "a"\n  | "b"\n)',
    "root ::= [\\]\\-]+",
]


@pytest.mark.parametrize("gbnf", VALID)
def test_grammars_llama_cpp_parses_are_accepted(gbnf: str) -> None:
    validate_gbnf(gbnf)


INVALID = [
    ('root ::= "a', "end of input"),
    ('root ::= "\\q"', "unknown escape"),
    ('root ::= "\\x4"', "hex digits"),
    ('root ::= "\\"" "\\" "\\"" space\nspace ::= " "?', "newline or the end"),
    ('root ::= "a"\n  | "b"', "expecting a name"),
    ('root ::= ("a"', "expecting '\\)'"),
    ('root ::= *"a"', "nothing before it"),
    ('root ::= "a"{2001}', "too many repetitions"),
    ("root ::= x", "undefined rule 'x'"),
    ('start ::= "a"', "no 'root' rule"),
    ('root ::= "\x00"', "NUL"),
    ("root = 'a'", "expecting ::="),
]


# Refused here though llama.cpp takes them: the converter never writes token references, and
# llama.cpp reads an empty grammar as no grammar at all.
STRICTER = [("root ::= <[12]>", "token references"), ("", "no rules")]


@pytest.mark.parametrize(("gbnf", "why"), INVALID + STRICTER)
def test_grammars_llama_cpp_refuses_are_refused_in_one_line(gbnf: str, why: str) -> None:
    with pytest.raises(GrammarRejected, match=why) as caught:
        validate_gbnf(gbnf)
    assert "\n" not in str(caught.value)


def test_nesting_is_bounded_without_recursion() -> None:
    deep = "root ::= " + "(" * (MAX_NESTING + 1) + '"a"' + ")" * (MAX_NESTING + 1)
    with pytest.raises(GrammarRejected, match="nests groups deeper"):
        validate_gbnf(deep)
    # Far past Python's recursion limit, still a clean refusal.
    with pytest.raises(GrammarRejected):
        validate_gbnf("root ::= " + "(" * 50_000 + '"a"' + ")" * 50_000)
    validate_gbnf("root ::= " + "(" * 900 + '"a"' + ")" * 900)


def test_alternatives_and_size_are_bounded() -> None:
    many = "root ::= " + " | ".join(f'"{i}"' for i in range(MAX_ALTERNATIVES + 2))
    with pytest.raises(GrammarRejected, match="alternatives"):
        validate_gbnf(many)
    with pytest.raises(GrammarRejected, match="larger than"):
        validate_gbnf('root ::= "' + "a" * MAX_GRAMMAR_BYTES + '"')


def test_llama_cpps_own_repetition_limit_is_mirrored() -> None:
    # Each `?` group adds rules to the enclosing group's count; llama.cpp refuses a repetition
    # that would make more than 2,000 at once.
    nested = "root ::= " + '("a" ' * 1050 + ")?" * 1050
    with pytest.raises(GrammarRejected, match="too many rules"):
        validate_gbnf(nested)


def test_the_converters_grammars_pass() -> None:
    validate_gbnf(json_object_grammar().gbnf)
    validate_gbnf(json_schema_grammar({"type": "string", "maxLength": 1000}).gbnf)


@pytest.fixture(scope="module")
def vocab() -> Iterator[ctypes.c_void_p]:
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(model_file("smollm2")).encode(), params)
    assert model
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


@pytest.mark.parametrize("gbnf", VALID + [g for g, _ in INVALID if "\x00" not in g])
def test_the_mirror_agrees_with_llama_cpp(vocab: ctypes.c_void_p, gbnf: str) -> None:
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if sampler:
        llama_cpp.llama_sampler_free(sampler)
    try:
        validate_gbnf(gbnf)
        mirror = True
    except GrammarRejected:
        mirror = False
    assert mirror == bool(sampler)


def test_a_literal_of_any_text_is_valid_gbnf() -> None:
    for text in ['"', "\\", "a\nb\tc\r", "\x01\x1f", "<\uff5cDSML\uff5c>", "[TOOL_CALLS]", ""]:
        validate_gbnf(f'root ::= {gbnf_literal(text)} | "x"')
