"""GBNF grammars for structured output and tool calls, from JSON schemas.

The conversion is llama-cpp-python's ``SchemaConverter`` (a port of llama.cpp's own
json-schema-to-grammar). It silently ignores the keywords it cannot express, so a schema is
checked first: a keyword that would constrain the output but cannot be enforced raises
:class:`SchemaNotSupported` naming it, rather than returning output that breaks the schema.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llama_cpp.llama_grammar import SchemaConverter

from server.engine.gbnf import GrammarRejected, gbnf_literal, validate_gbnf
from server.engine.grammar_limits import GrammarLimitError, check_keyword_bounds, check_schema_size
from server.engine.types import Grammar

# Keywords that constrain a value but that the converter does not enforce.
UNENFORCEABLE = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "not",
        "if",
        "then",
        "else",
        "patternProperties",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
        "additionalItems",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "contentEncoding",
        "contentMediaType",
    }
)
ENFORCED_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid3", "uuid4"})
# Keywords whose values are schemas, or maps or lists of schemas.
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties")

logger = logging.getLogger(__name__)

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


class SchemaNotSupported(ValueError):
    """A JSON schema (or part of one) that cannot be turned into a grammar."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{message} (at {path or 'the top level'})")


@dataclass(frozen=True)
class FunctionSpec:
    """A tool the model may call: its name and the JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any]


def json_schema_grammar(schema: dict[str, Any]) -> Grammar:
    """A grammar for JSON values that match ``schema``."""
    converter = _converter()
    root = _visit(converter, schema, "")
    return Grammar(_checked(_format(converter)), root=root)


def json_object_grammar() -> Grammar:
    """A grammar for any JSON object (OpenAI's ``{"type": "json_object"}``)."""
    return json_schema_grammar({"type": "object"})


def tool_call_grammar(
    functions: Sequence[FunctionSpec], *, parallel: bool, lazy: bool = False
) -> Grammar:
    """Calls in the form ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
    to one of ``functions`` with arguments matching its schema; several in a row when
    ``parallel``. ``lazy``: text is free until ``<tool_call>`` appears, and constrained after."""
    converter = _converter()
    # Each function's parameters are a document of their own: their references (pydantic
    # writes "#/$defs/X") point into them, not into the wrapper built around them here. Each
    # is kept under the wrapper's $defs, its references rebased to point there.
    definitions: dict[str, Any] = {}
    calls = []
    for i, function in enumerate(functions):
        parameters = function.parameters or {}
        check_schema(parameters)
        home = f"{_FUNCTION_ROOT}{i}"
        definitions[home] = _rebased(parameters, f"#/$defs/{home}")
        calls.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": function.name},
                    "arguments": {"$ref": f"#/$defs/{home}"},
                },
                "required": ["name", "arguments"],
            }
        )
    wrapper: dict[str, Any] = {"anyOf": calls} if len(calls) > 1 else dict(calls[0])
    wrapper["$defs"] = definitions
    call = _visit(converter, wrapper, "call", checked=True)
    one = f'"{TOOL_CALL_OPEN}\\n" {call} "\\n{TOOL_CALL_CLOSE}"'
    rules = _format(converter)
    rules += f"\ntool-call ::= {one}"
    rules += "\nroot ::= tool-call" + (' ("\\n" tool-call)*' if parallel else "")
    return Grammar(_checked(rules), triggers=(TOOL_CALL_OPEN,) if lazy else ())


# Where tool_call_grammar keeps each function's parameters, under the wrapper's $defs.
_FUNCTION_ROOT = "hearth-function-"


# How json.dumps writes JSON by default, and so how chat templates' ``tojson`` writes a
# call's arguments: ", " between items, ": " after keys, nothing else.
DUMPS_SEPARATORS = (", ", ": ")
# A string's characters as json.dumps(ensure_ascii=False) writes them: unescaped but for the
# quote, the backslash and control characters.
_DUMPS_CHAR = r'char ::= [^"\\\x00-\x1F] | "\\" (["\\bfnrt] | "u00" [01] [0-9a-f])'
# ... and with ensure_ascii=True: every character past ASCII as \uXXXX (a pair for those past
# the Basic Multilingual Plane).
_DUMPS_ASCII_CHAR = r'char ::= [^"\\\x00-\x1F\x80-\U0010FFFF] | "\\" (["\\bfnrt] | "u" [0-9a-f]{4})'


def call_grammar(
    functions: Sequence[FunctionSpec],
    compose: Callable[[list[str]], str],
    *,
    separators: tuple[str, str] = DUMPS_SEPARATORS,
    ascii: bool = False,
    spell: Callable[[str], str] | None = None,
    triggers: tuple[str, ...] = (),
    arguments: ArgumentsRules | None = None,
) -> Grammar:
    """A grammar for tool calls written in a chat format's own text: each function's arguments
    are a rule (``compose`` receives their names, in the order of ``functions``, and returns
    the rules from ``root`` down that place them among the format's literal text). The
    arguments are JSON written exactly as json.dumps writes it with ``separators`` (no other
    whitespace, characters unescaped), which is how chat templates render them back: a call
    the model writes is then, byte for byte, what the template writes for it next turn.

    ``arguments`` writes the arguments' rules instead (a format that writes them parameter by
    parameter): it gets each function's index and parameters and a ``visit(schema, name)``
    that makes JSON rules for a value, and returns the rule's name and its rules' text.
    ``spell`` rewrites the values' rules to another spelling of them (Python's, Gemma's)."""
    converter = _converter()
    python_converter: list[SchemaConverter] = []  # made when a format asks for one
    names = []
    extra = []

    def visit(schema: dict[str, Any], name: str, *, python: bool = False) -> str:
        if not python:
            return _visit(converter, schema, name, checked=True)
        if not python_converter:
            python_converter.append(_converter())
        return _PYTHON_PREFIX + _visit(python_converter[0], schema, name, checked=True)

    for i, function in enumerate(functions):
        parameters = function.parameters or {}
        check_schema(parameters)
        if arguments is None:
            names.append(visit(parameters, f"arguments-{i}"))
        else:
            try:
                name, rules = arguments(i, parameters, visit)
            except (RecursionError, TypeError, AttributeError) as exc:
                # A format's own writer met a schema it cannot follow (nested past Python's
                # stack, or a keyword of the wrong kind): a refusal, not a server error.
                raise SchemaNotSupported(
                    f"the parameters of '{function.name}' cannot be written in this model's "
                    f"call format ({type(exc).__name__})"
                ) from None
            names.append(name)
            extra.append(rules)
    values = _exact_json(_format(converter), separators, ascii=ascii)
    if spell is not None:
        values = spell(values)
    if python_converter:  # values written as Python's repr writes them, beside JSON ones
        pythonic = python_spelling(_exact_json(_format(python_converter[0]), DUMPS_SEPARATORS))
        values += "\n" + _prefixed(pythonic, _PYTHON_PREFIX)
    rules = "\n".join([values, *extra, compose(names)])
    return Grammar(_checked(rules), triggers=triggers)


class Visit(Protocol):
    """Rules for a value under ``schema``, named ``name``: JSON, or (``python``) as Python's
    repr writes it."""

    def __call__(self, schema: dict[str, Any], name: str, *, python: bool = False) -> str: ...


# (function index, its parameters, visit) -> (the arguments' rule name, rules text)
ArgumentsRules = Callable[[int, dict[str, Any], Visit], tuple[str, str]]

_PYTHON_PREFIX = "py-"
_IDENTIFIER = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[A-Za-z0-9-]+')


def _prefixed(rules: str, prefix: str) -> str:
    """``rules`` with every rule they define renamed ``prefix`` + name (its references too),
    so that they sit beside rules of the same names; literals and classes are left as are."""
    lines = rules.splitlines()
    defined = {line.split(" ::= ", 1)[0] for line in lines if " ::= " in line}

    def rename(match: re.Match[str]) -> str:
        token = match.group(0)
        return prefix + token if token in defined else token

    out = []
    for line in lines:
        head, sep, body = line.partition(" ::= ")
        out.append(prefix + head + sep + _IDENTIFIER.sub(rename, body) if sep else line)
    return "\n".join(out)


def _exact_json(rules: str, separators: tuple[str, str], *, ascii: bool = False) -> str:
    """The converter's rules, which allow one optional space after every token, rewritten to
    allow exactly the separators given and no other whitespace (and with ``ascii``, only
    ASCII characters, the others escaped)."""
    item, key = (json.dumps(s) for s in separators)
    lines = []
    for line in rules.splitlines():
        if line.startswith("space ::= "):
            line = 'space ::= ""'
        elif line.startswith("char ::= "):
            line = _DUMPS_ASCII_CHAR if ascii else _DUMPS_CHAR
        else:
            line = line.replace('"," space', item).replace('":" space', key)
            line = line.replace('"{" space', '"{"').replace('"[" space', '"["')
        lines.append(line)
    return "\n".join(lines)


# A string's characters as Python's repr writes them between single quotes (less the \x and
# \u escapes of characters it deems unprintable).
_REPR_CHAR = r"""char ::= [^'\\\x00-\x1F] | "\\" (['\\nrt] | "x" [0-9a-f]{2})"""
# A literal (its text captured), or a character class, which is left as it is.
_GBNF_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"|\[(?:[^\]\\]|\\.)*\]')
_PYTHON_WORDS = {"true": "True", "false": "False", "null": "None"}


def python_spelling(rules: str) -> str:
    """Exact-JSON rules (:func:`_exact_json`) rewritten to the values Python's repr writes:
    strings in single quotes, ``True``, ``False`` and ``None`` (how a template's ``string``
    filter writes a dict: Seed-OSS's parameters)."""

    def literal(match: re.Match[str]) -> str:
        text = match.group(1)
        if text is None:  # a character class
            return match.group(0)
        if text in _PYTHON_WORDS:
            return f'"{_PYTHON_WORDS[text]}"'
        return '"' + text.replace('\\"', "'") + '"'

    lines = []
    for line in rules.splitlines():
        if line.startswith("char ::= "):
            lines.append(_REPR_CHAR)
            continue
        head, sep, body = line.partition(" ::= ")
        lines.append(head + sep + _GBNF_LITERAL.sub(literal, body) if sep else line)
    return "\n".join(lines)


def _rebased(schema: Any, base: str) -> Any:
    """``schema`` with every local reference ``#/...`` made relative to ``base`` instead."""
    if isinstance(schema, list):
        return [_rebased(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    rebased = {key: _rebased(value, base) for key, value in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        rebased["$ref"] = base + ref[1:]
    return rebased


def _checked(gbnf: str) -> str:
    """``gbnf``, once llama.cpp is sure to parse it (see :mod:`server.engine.gbnf`)."""
    try:
        validate_gbnf(gbnf)
    except GrammarRejected as exc:
        logger.warning("refused a grammar made from a schema: %s", exc)
        raise SchemaNotSupported(str(exc)) from None
    return gbnf


def check_schema(schema: Any, path: str = "") -> None:
    """Raise :class:`SchemaNotSupported` for anything in ``schema`` a grammar cannot enforce,
    or that is beyond the bounds of :mod:`server.engine.grammar_limits`."""
    try:
        check_schema_size(schema)
    except GrammarLimitError as exc:
        raise SchemaNotSupported(str(exc), path=path) from None
    _check_node(schema, path)


def _check_node(schema: Any, path: str) -> None:
    if isinstance(schema, bool):
        if schema is False:
            raise SchemaNotSupported("a schema of `false` matches nothing", path=path)
        return
    if not isinstance(schema, dict):
        raise SchemaNotSupported("a schema must be an object", path=path)
    for keyword in sorted(UNENFORCEABLE.intersection(schema)):
        raise SchemaNotSupported(f"the keyword '{keyword}' cannot be enforced", path=path)
    fmt = schema.get("format")
    if fmt is not None and fmt not in ENFORCED_FORMATS:
        raise SchemaNotSupported(f"the string format '{fmt}' cannot be enforced", path=path)
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        raise SchemaNotSupported(
            f"only local references ('#/...') are supported, not {ref!r}", path=path
        )
    if "pattern" in schema:
        pattern = schema["pattern"]
        if not (isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$")):
            raise SchemaNotSupported(
                "a 'pattern' must be anchored with ^ and $ to be enforced", path=path
            )
    try:
        check_keyword_bounds(schema)
    except GrammarLimitError as exc:
        raise SchemaNotSupported(str(exc), path=path) from None
    for name, sub in _subschemas(schema):
        _check_node(sub, f"{path}/{name}")


def _subschemas(schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key in _SUBSCHEMA_MAPS:
        value = schema.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield f"{key}/{name}", sub
    for key in _SUBSCHEMA_LISTS:
        value = schema.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                yield f"{key}/{i}", sub
    for key in _SUBSCHEMAS:
        value = schema.get(key)
        if isinstance(value, dict):
            yield key, value
        elif isinstance(value, list):  # the old tuple form of "items"
            for i, sub in enumerate(value):
                yield f"{key}/{i}", sub


def _format(converter: SchemaConverter) -> str:
    rules = str(converter.format_grammar())  # type: ignore[no-untyped-call]
    return _ADDITIONAL_REST.sub(r'\1 ::= ( "," space \2additional-kv )*', rules)


# llama-cpp-python's converter writes the additional members that follow declared ones
# (``properties`` with ``additionalProperties``) as ``a-rest ::= additional-kvs``: at least
# one more member, and no comma before it, so the only objects it admits are not JSON.
# They are optional, each after a comma.
_ADDITIONAL_REST = re.compile(r"^(\S*-rest) ::= (\S*?)additional-kvs$", re.MULTILINE)


class _Converter(SchemaConverter):
    """llama-cpp-python's converter, with literals written by :func:`gbnf_literal`: its own
    leaves backslashes as they are, so an enum value or a property name holding a quote made
    a grammar llama.cpp refuses, and one holding a backslash admitted text that is not JSON."""

    def _format_literal(self, literal: str) -> str:
        return gbnf_literal(literal)


def _converter() -> SchemaConverter:
    return _Converter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )


def _visit(
    converter: SchemaConverter, schema: dict[str, Any], name: str, *, checked: bool = False
) -> str:
    if not checked:
        check_schema(schema)
    schema = _any_value_where_unconstrained(copy.deepcopy(schema))  # rewritten in place below
    _resolve_local_refs(converter, schema)
    try:
        return str(converter.visit(schema, name))  # type: ignore[no-untyped-call]
    except Exception as exc:  # the converter asserts and indexes freely over arbitrary input
        detail = str(exc) or type(exc).__name__
        raise SchemaNotSupported(f"the schema cannot be turned into a grammar: {detail}") from exc


# Keywords that say something about a value without constraining it.
_ANNOTATIONS = frozenset(
    {
        "description",
        "title",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "$anchor",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
    }
)


def _any_value_where_unconstrained(schema: Any, *, root: bool = True) -> Any:
    """``schema`` with every subschema below the top that constrains nothing (``{}``,
    ``{"description": ...}``) made the converter's any-value rule: it would otherwise fail on
    one ("Unrecognized schema") or take a bare ``{}`` for an object. An unconstrained top
    level stays an object, as arguments and structured answers are."""
    if not isinstance(schema, dict):
        return schema
    if not set(schema) - _ANNOTATIONS:
        return {**schema, "type": "object" if root else "value"}
    for key in _SUBSCHEMA_MAPS:
        value = schema.get(key)
        if isinstance(value, dict):
            schema[key] = {
                k: _any_value_where_unconstrained(v, root=False) for k, v in value.items()
            }
    for key in (*_SUBSCHEMA_LISTS, *_SUBSCHEMAS):
        value = schema.get(key)
        if isinstance(value, list):
            schema[key] = [_any_value_where_unconstrained(v, root=False) for v in value]
        elif isinstance(value, dict):
            schema[key] = _any_value_where_unconstrained(value, root=False)
    return schema


def _resolve_local_refs(converter: SchemaConverter, root: dict[str, Any]) -> None:
    """Register every ``#/...`` reference in ``root`` with the converter.

    The converter's own ``resolve_refs`` stops at the first ``$ref`` it meets, so a schema whose
    top level is a ``$ref`` (pydantic's form for a recursive model) leaves the references
    inside ``$defs`` unresolved. This walks the whole tree instead."""

    def target_of(ref: str) -> Any:
        node: Any = root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise SchemaNotSupported(f"the reference {ref!r} points nowhere")
            node = node[part]
        return node

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                converter._refs[ref] = target_of(ref)
            for value in node.values():
                walk(value)

    walk(root)
