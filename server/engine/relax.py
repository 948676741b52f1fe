"""Relaxing a JSON schema to what a grammar can enforce, for schemas that are hints.

A tool's parameters are a hint to the model, not a promise: OpenAI's non-strict tools, and
every Anthropic and Ollama tool (neither API has a strict mode for them). Agents send schemas
full of keywords that only narrow a value (Claude Code: ``maximum`` on timeouts, ``format:
"uri"``, a ``maxLength`` of 524,288), and a server that refused them would refuse the agent's
every request. So for those schemas, what the grammar enforces cheaply and safely stays
(types, required keys, enums, consts, nesting, local ``$ref``, ``anyOf``) and the rest is
dropped: the value is then simply less constrained. Only ``strict: true`` refuses what it
cannot enforce (:func:`server.engine.grammar.check_schema`).

The bounds that protect the server are not relaxed: the schema's size and depth are checked
before this walk (which recurses once per level), and the grammar made from the relaxed schema
is still checked by :mod:`server.engine.gbnf`.
"""

from __future__ import annotations

from typing import Any

from server.engine.grammar import ENFORCED_FORMATS, UNENFORCEABLE
from server.engine.grammar_limits import (
    MAX_BRANCHES,
    MAX_REPETITION,
    GrammarLimitError,
    check_pattern,
    check_schema_size,
)

_REPETITIONS = ("minLength", "maxLength", "minItems", "maxItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMAS = ("items", "additionalProperties")
# The JSON type of an enum value, for an enum too long to enforce value by value.
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"))


def relax_schema(schema: Any) -> tuple[Any, list[str]]:
    """``schema`` without the keywords a grammar cannot enforce, and where each one was, as
    ``"maximum at /properties/timeout"``. The caller's schema is not modified.

    Raises :class:`GrammarLimitError` for a schema too large or deep to walk at all."""
    check_schema_size(schema)
    relaxed: list[str] = []
    return _relax(schema, "", relaxed), relaxed


def _relax(schema: Any, path: str, relaxed: list[str]) -> Any:
    if isinstance(schema, bool):
        if schema is False:  # matches nothing: as a hint, it says nothing either
            relaxed.append(f"false at {path or '/'}")
            return {}
        return schema
    if not isinstance(schema, dict):
        relaxed.append(f"a non-schema value at {path or '/'}")
        return {}
    out: dict[str, Any] = {}
    where = path or "/"
    for key, value in schema.items():
        if key in UNENFORCEABLE:
            relaxed.append(f"{key} at {where}")
        elif key == "format" and value not in ENFORCED_FORMATS:
            relaxed.append(f"format {value!r} at {where}")
        elif key == "pattern" and not _enforceable_pattern(value):
            relaxed.append(f"pattern at {where}")
        elif key in _REPETITIONS and not _enforceable_count(value):
            relaxed.append(f"{key} {value!r} at {where}")
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            relaxed.append(f"$ref {value!r} at {where}")
        elif key == "enum" and isinstance(value, list) and len(value) > MAX_BRANCHES:
            relaxed.append(f"enum of {len(value)} values at {where}")
            types = _types_of(value)
            if types and "type" not in schema:
                out["type"] = types[0] if len(types) == 1 else types
        elif key in _SCHEMA_LISTS and isinstance(value, list) and len(value) > MAX_BRANCHES:
            relaxed.append(f"{key} of {len(value)} branches at {where}")
        elif key in (*_SCHEMA_LISTS, "items") and isinstance(value, list):  # old tuple "items"
            out[key] = [_relax(sub, f"{path}/{key}/{i}", relaxed) for i, sub in enumerate(value)]
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {
                name: _relax(sub, f"{path}/{key}/{name}", relaxed) for name, sub in value.items()
            }
        elif key in _SCHEMAS and isinstance(value, dict):
            out[key] = _relax(value, f"{path}/{key}", relaxed)
        else:
            out[key] = value
    return out


def _enforceable_pattern(pattern: Any) -> bool:
    if not (isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$")):
        return False
    try:
        check_pattern(pattern)
    except GrammarLimitError:
        return False
    return True


def _enforceable_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REPETITION


def _types_of(values: list[Any]) -> list[str]:
    types: list[str] = []
    for value in values:
        if value is None:
            name = "null"
        else:
            name = next((n for t, n in _JSON_TYPES if isinstance(value, t)), "")
        if not name:  # an object or array among the values: any value may be meant
            return []
        if name not in types:
            types.append(name)
    return types
