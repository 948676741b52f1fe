"""JSON arguments written indented, as Command R+'s template writes them:
``tool_call.arguments|tojson(indent=4)|indent(8)`` (each level four spaces deeper, every line
after the first eight more, an empty object or list as ``{}`` / ``[]``).

Here: the writer, where the arguments end as they stream in, their reading back (to compact
JSON, the form clients get), and the grammar of one function's arguments in this form. The
grammar's structure (objects, lists, their indentation at each depth) is written here; its
leaves (strings, numbers, booleans, null) are the exact-JSON rules of
:mod:`server.engine.grammar`, which hold no whitespace.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.engine.gbnf import gbnf_literal
from server.services.formats.schema_rules import SchemaRules, options

# How deep lists and objects may nest inside the arguments; deeper values are scalars. (The
# grammar writes each depth's indentation out, so it grows with this bound.)
MAX_DEPTH = 6
_SCALARS = ("string", "number", "integer", "boolean", "null")


class JsonScan:
    """Finds where a JSON object ends, as its text arrives."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.done = False

    def feed(self, text: str) -> int:
        """How much of ``text`` the object takes to its end, or -1: all, and more to come."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
        return -1


@dataclass(frozen=True)
class Indented:
    """Arguments as ``json.dumps(value, indent=step)`` writes them, every line after the
    first ``base`` spaces further in."""

    step: int
    base: int

    Scan = JsonScan
    opening = "{"

    def write(self, value: Any) -> str:
        text = json.dumps(value, ensure_ascii=False, indent=self.step)
        return text.replace("\n", "\n" + " " * self.base)

    def to_json(self, text: str, schema: Any = None) -> str:
        """The arguments as compact JSON text; ValueError if they are not a JSON object."""
        try:
            value = json.loads(text)
        except RecursionError as exc:
            raise ValueError("the arguments nest too deep") from exc
        if not isinstance(value, dict):
            raise ValueError("the arguments are not an object")
        return json.dumps(value, ensure_ascii=False)

    def rules(
        self, index: int, schema: dict[str, Any], visit: Callable[..., str]
    ) -> tuple[str, str]:
        """The rules of one function's arguments (an object) in this form: the head rule's
        name and the rules' text."""
        writer = _Rules(f"ind-{index}", self, visit, schema)
        head = writer.value({**schema, "type": "object"}, 0, 0)  # arguments are an object
        writer.out.append(f"ind-{index} ::= {head}")
        return f"ind-{index}", "\n".join(writer.out)


class _Rules(SchemaRules):
    def __init__(
        self, prefix: str, form: Indented, visit: Callable[..., str], root: dict[str, Any]
    ) -> None:
        super().__init__(prefix, visit, root)
        self.form = form

    def newline(self, depth: int) -> str:
        return gbnf_literal("\n" + " " * (self.form.base + self.form.step * depth))

    def dumped(self, value: Any, depth: int) -> str:
        """A literal: ``value`` as it is written at ``depth``."""
        text = json.dumps(value, ensure_ascii=False, indent=self.form.step)
        return gbnf_literal(
            text.replace("\n", "\n" + " " * (self.form.base + self.form.step * depth))
        )

    def body(self, schema: dict[str, Any], depth: int, refs: int) -> str:
        referenced = self.referenced(schema, depth, refs)
        if referenced is not None:
            return referenced
        if "const" in schema:
            return self.dumped(schema["const"], depth)
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return " | ".join(self.dumped(v, depth) for v in schema["enum"])
        alternatives = options(schema)
        if alternatives:
            return " | ".join(self.value(o, depth, refs) for o in alternatives)
        kind = schema.get("type")
        if kind == "object" or (kind is None and "properties" in schema):
            return self.object(schema, depth, refs)
        if kind == "array" or (kind is None and "items" in schema):
            return self.array(schema, depth, refs)
        if kind in _SCALARS:
            return self.visit(schema, f"{self.prefix}-leaf")
        return self.any(depth)

    def object(self, schema: dict[str, Any], depth: int, refs: int) -> str:
        if depth >= MAX_DEPTH:
            return '"{}"'
        declared = schema.get("properties")
        inner = self.newline(depth + 1)
        close = f'{self.newline(depth)} "}}"'
        sep = f'"," {inner}'
        if not isinstance(declared, dict) or not declared:
            # As llama.cpp's converter reads it: no properties key, any members unless
            # additionalProperties is false; properties declared empty, none unless
            # additionalProperties says otherwise.
            extra = schema.get("additionalProperties", not isinstance(declared, dict))
            if extra is False:
                return '"{}"'
            string = self.visit({"type": "string"}, f"{self.prefix}-key")
            member = f'{string} ": " {self.value(extra, depth + 1, refs)}'
            return f'"{{}}" | "{{" {inner} {member} ( {sep} {member} )* {close}'
        listed = schema.get("required")
        required = {k for k in (listed if isinstance(listed, list) else []) if isinstance(k, str)}
        members = [
            (name in required, f"{gbnf_literal(json.dumps(name, ensure_ascii=False) + ': ')} "
             f"{self.value(sub, depth + 1, refs)}")
            for name, sub in declared.items()
        ]  # fmt: skip
        must = [m for r, m in members if r]
        may = [m for r, m in members if not r]
        # rests[k]: the optional members k.. each after a separator (something came before).
        rests = [""]
        for member in reversed(may):
            rests.insert(0, self.rule(f"( {sep} {member} )? {rests[0]}".strip()))
        if must:
            return f'"{{" {inner} {f" {sep} ".join(must)} {rests[0]} {close}'
        # None required: the first member present comes without a separator (a chain, so
        # the rules grow with the members, not with their square).
        first = ""
        for k in range(len(may) - 1, -1, -1):
            option = f"{may[k]} {rests[k + 1]}".strip()
            first = self.rule(f"( {option} ) | {first}" if first else option)
        return f'"{{}}" | "{{" {inner} {first} {close}'

    def array(self, schema: dict[str, Any], depth: int, refs: int) -> str:
        if depth >= MAX_DEPTH:
            return '"[]"'
        item = self.value(schema.get("items", True), depth + 1, refs)
        inner = self.newline(depth + 1)
        full = f'"[" {inner} {item} ( "," {inner} {item} )* {self.newline(depth)} "]"'
        least = schema.get("minItems")
        if isinstance(least, int) and not isinstance(least, bool) and least > 0:
            return full
        return f'"[]" | {full}'

    def fallback(self, depth: int) -> str:
        return self.any(depth)

    def any(self, depth: int) -> str:
        key = (0, depth)
        if key not in self.done:
            name = f"{self.prefix}-any-{depth}"
            self.done[key] = name
            options = [
                self.visit({"type": k}, f"{self.prefix}-leaf")
                for k in ("string", "number", "boolean", "null")
            ]
            if depth < MAX_DEPTH:
                options.append(self.object({"type": "object"}, depth, 0))
                options.append(self.array({"type": "array"}, depth, 0))
            self.out.append(f"{name} ::= " + " | ".join(f"( {o} )" for o in options))
        return self.done[key]
