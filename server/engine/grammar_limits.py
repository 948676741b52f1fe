"""Bounds on what a client's JSON schema may turn into, checked before llama.cpp sees it.

A schema is the client's, and the grammar made from it runs in C on threads every request
shares, so both are bounded here (STYLE.md, rule 15):

- **Nesting.** llama.cpp parses a grammar recursively, one level of C stack per nested group,
  on the calling thread. The converter writes ``maxLength: N`` (and ``maxItems``, and a
  pattern's ``{0,N}``) as N nested groups: at N = 20,000 the parse overflowed the stack and
  killed the process, and from about 2,000 llama.cpp refuses the grammar anyway. Repetition
  counts are therefore bounded before conversion (a 400 naming the keyword), and the nesting
  of the grammar text after it.
- **Work per token.** The grammar sampler checks every candidate token against every
  alternative open at the current position: a full pass cost 7 ms for a plain object, 139 ms
  for an enum of 256 strings and over a second for 2,000 (SmolLM2, 49,152 tokens, two
  threads), all of it on the engine thread that decodes for everyone. Enum values and
  branches per keyword are bounded here, the alternatives of the whole grammar in
  :mod:`server.engine.gbnf`.
- **Size.** The schema's nesting and node count, and a pattern's expansion (the converter
  writes ``x{3}`` as ``x x x``, so nested counts multiply).
"""

from __future__ import annotations

import re
from typing import Any

# A bound that a client's schema passes is named after the keyword it constrains.
MAX_REPETITION = 1000  # minLength, maxLength, minItems, maxItems, a pattern's {m,n}
MAX_BRANCHES = 256  # values of one enum, branches of one anyOf/oneOf/allOf
MAX_SCHEMA_DEPTH = 64  # nesting of the schema's JSON (objects and arrays)
MAX_SCHEMA_NODES = 20_000  # objects, arrays and values in the schema
MAX_PATTERN_LENGTH = 2000  # characters of one pattern
MAX_PATTERN_EXPANSION = 20_000  # characters a pattern becomes once its counts are expanded

_REPETITION_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")
_BRANCH_KEYWORDS = ("enum", "anyOf", "oneOf", "allOf")


class GrammarLimitError(ValueError):
    """A schema or grammar beyond one of the bounds above; the message names what."""


def check_schema_size(schema: Any) -> None:
    """Depth and node count of the schema's JSON, walked without recursion (a schema nested
    600 deep must be refused, not raise RecursionError)."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise GrammarLimitError(f"the schema has more than {MAX_SCHEMA_NODES} values")
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_SCHEMA_DEPTH:
            raise GrammarLimitError(f"the schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def check_keyword_bounds(schema: dict[str, Any]) -> None:
    """The repetition counts, branch counts and pattern of one schema object."""
    for keyword in _REPETITION_KEYWORDS:
        value = schema.get(keyword)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise GrammarLimitError(f"'{keyword}' must be a non-negative integer")
        if value > MAX_REPETITION:
            raise GrammarLimitError(
                f"'{keyword}' is {value}; at most {MAX_REPETITION} can be enforced"
            )
    for keyword in _BRANCH_KEYWORDS:
        value = schema.get(keyword)
        if isinstance(value, list) and len(value) > MAX_BRANCHES:
            raise GrammarLimitError(
                f"'{keyword}' has {len(value)} entries; at most {MAX_BRANCHES} can be enforced"
            )
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        check_pattern(pattern)


_QUANTIFIER = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")


def check_pattern(pattern: str) -> None:
    """A pattern's length, its repetition counts, and what it expands to: the converter writes
    each counted repetition out in full, so ``(a{1000}){1000}`` would be a million symbols."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise GrammarLimitError(
            f"'pattern' is {len(pattern)} characters; at most {MAX_PATTERN_LENGTH}"
        )
    # Each open group: (its size so far, the size of its current alternative, the last atom).
    groups: list[list[int]] = [[0, 0, 0]]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        frame = groups[-1]
        if char == "\\":
            frame[1] += 1
            frame[2] = 1
            i += 2
            continue
        if char == "[":
            end = _class_end(pattern, i)
            frame[1] += 1
            frame[2] = 1
            i = end + 1
            continue
        if char == "(":
            groups.append([0, 0, 0])
            i += 1
            continue
        if char == ")" and len(groups) > 1:
            inner = groups.pop()
            size = max(inner[0], inner[1])
            groups[-1][1] += size
            groups[-1][2] = size
            i += 1
            continue
        if char == "|":
            frame[0] = max(frame[0], frame[1])
            frame[1] = frame[2] = 0
            i += 1
            continue
        match = _QUANTIFIER.match(pattern, i) if char == "{" else None
        if match is not None:
            counts = [int(n) for n in (match.group(1), match.group(3)) if n]
            if any(n > MAX_REPETITION for n in counts):
                raise GrammarLimitError(
                    f"'pattern' repeats {max(counts)} times; at most {MAX_REPETITION} can be "
                    f"enforced"
                )
            times = max(counts, default=1)
            frame[1] += frame[2] * (times - 1)
            frame[2] *= times
            i = match.end()
        else:
            frame[1] += 1
            frame[2] = 1
            i += 1
        if max(frame[1], frame[2]) > MAX_PATTERN_EXPANSION:
            raise GrammarLimitError(
                f"'pattern' expands to more than {MAX_PATTERN_EXPANSION} symbols once its "
                f"repetitions are written out"
            )


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the character class opened at ``start`` (or the end)."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return min(i, len(pattern) - 1)
