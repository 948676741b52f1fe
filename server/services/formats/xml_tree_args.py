"""Arguments written as an XML tree, as MiniMax-M3's template writes them: each parameter
``NS<city>Paris NS</city>`` (``NS`` a marker of the template's own, ``]<]minimax[>[``), an
object's members the same way one level down, a list's items as ``NS<item>...NS</item>``,
booleans as ``true``/``false``, numbers as Python writes them, strings raw, and a member
whose value is null left out.

The text alone does not say whether ``NS<n>7NS</n>`` holds a number or a string, nor whether
an empty element is ``""``, ``{}`` or ``[]``: the function's schema does, so the reader takes
it. Here: the writer, where the arguments end as they stream in (at the call's closing
element), their reading back into JSON, and the grammar of one function's arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.engine.gbnf import gbnf_literal
from server.engine.grammar import SchemaNotSupported
from server.services.formats.params import without_rule
from server.services.formats.schema_rules import (
    MAX_REFS,
    SchemaRules,
    definitions_of,
    options,
    resolve,
)

# How deep objects and lists may nest inside the arguments (deeper values are text).
MAX_DEPTH = 6
# A tag's name: a parameter's name, or ``item`` (the template writes names as they are; one
# holding <, > or / or a line break, or longer than this, cannot be read back: refused).
_TAG = re.compile(r"[^<>/\n]{1,200}")
_TAG_CLASS = "[^<>/\\n]"
# How many schema steps reading one call's arguments back may take (anyOf tries each
# option, and a deep tree under nested options could take exponentially many).
MAX_STEPS = 20_000
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


@dataclass(frozen=True)
class XmlTree:
    """Arguments as an XML tree whose every tag is preceded by ``marker``."""

    marker: str

    @property
    def opening(self) -> str:
        """What the arguments' text starts with (their first tag, or the call's end)."""
        return self.marker

    def Scan(self) -> TreeScan:
        return TreeScan(self.marker)

    def write(self, value: Any) -> str:
        """Arguments (an object) as the template writes them."""
        m = self.marker
        if isinstance(value, dict):
            return "".join(
                f"{m}<{k}>{self.write(v)}{m}</{k}>" for k, v in value.items() if v is not None
            )
        if isinstance(value, list):
            return "".join(f"{m}<item>{self.write(v)}{m}</item>" for v in value)
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def to_json(self, text: str, schema: Any = None) -> str:
        """The arguments as JSON text, their leaves typed by ``schema`` (the function's
        parameters); ValueError if the text is not such a tree."""
        content, at = self._read(text, 0, 0)
        if at != len(text) or (isinstance(content, str) and content):
            raise ValueError("the arguments are not a tree of elements")
        root = schema if isinstance(schema, dict) else {}
        value = _Reader(definitions_of(root)).typed(content or [], {**root, "type": "object"}, 0)
        if not isinstance(value, dict):
            raise ValueError("the arguments are not an object")
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    def _read(self, text: str, at: int, depth: int) -> tuple[str | list[tuple[str, Any]], int]:
        """The content at ``at`` (text, or elements as (tag, content)) and where it ends:
        before the closing tag that ends its element, or the end of the text."""
        m = self.marker
        if depth > MAX_DEPTH + 1:
            raise ValueError("the arguments nest too deep")
        if not text.startswith(m + "<", at) or text.startswith(m + "</", at):
            end = text.find(m, at)
            end = len(text) if end < 0 else end
            return text[at:end], end
        elements: list[tuple[str, Any]] = []
        while text.startswith(m + "<", at) and not text.startswith(m + "</", at):
            tag = _TAG.match(text, at + len(m) + 1)
            if tag is None or not text.startswith(">", tag.end()):
                raise ValueError("a tag was expected")
            content, at = self._read(text, tag.end() + 1, depth + 1)
            closing = f"{m}</{tag.group(0)}>"
            if not text.startswith(closing, at):
                raise ValueError(f"{closing!r} was expected")
            elements.append((tag.group(0), content))
            at += len(closing)
        return elements, at

    def rules(
        self, index: int, schema: dict[str, Any], visit: Callable[..., str]
    ) -> tuple[str, str]:
        """The rules of one function's arguments: the head rule's name and the rules."""
        writer = _Rules(f"xt-{index}", self.marker, visit, schema)
        if index == 0:
            writer.out.extend(without_rule(self.marker, "xt-text"))
        head = writer.members({**schema, "type": "object"}, 0, 0)
        writer.out.append(f"xt-{index} ::= {head}")
        return f"xt-{index}", "\n".join(writer.out)


class TreeScan:
    """Finds where the arguments end as their text arrives: at the first closing tag that
    closes no element of theirs (the call's own). ``held`` is how much of the end of the
    last text may begin a tag not yet whole: the caller gives it again with what follows."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.depth = 0
        self.held = 0
        self.done = False
        self.failed = False  # the text turned out to be no arguments

    def feed(self, text: str) -> int:
        m = self.marker
        at = 0
        self.held = 0
        while True:
            found = text.find(m, at)
            if found < 0:
                # The end may hold the start of a marker.
                for k in range(min(len(m) - 1, len(text) - at), 0, -1):
                    if m.startswith(text[len(text) - k :]):
                        self.held = k
                        break
                return -1
            close = text.find(">", found + len(m))
            if close < 0 or len(text) - found < len(m) + 2:
                if len(text) - found > len(m) + 202:
                    self.failed = True  # no tag is that long: not arguments
                    return found
                self.held = len(text) - found
                return -1
            if text.startswith("</", found + len(m)):
                if self.depth == 0:
                    self.done = True
                    return found
                self.depth -= 1
            elif text.startswith("<", found + len(m)):
                self.depth += 1
                if self.depth > MAX_DEPTH + 2:
                    self.failed = True  # not arguments
                    return close + 1
            at = close + 1


def _allows_null(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    return (
        kind == "null"
        or (isinstance(kind, list) and "null" in kind)
        or any(_allows_null(o) for o in options(schema) if o.get("type") != kind)
    )


class _Reader:
    """Reads a tree's content as the value a schema describes, in a bounded number of
    steps."""

    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self.definitions = definitions
        self.steps = 0

    def typed(self, content: Any, schema: Any, refs: int) -> Any:
        """``content`` (text, or elements) as the value ``schema`` describes."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise ValueError("the arguments take too long to read against their schema")
        schema = schema if isinstance(schema, dict) else {}
        ref = schema.get("$ref")
        if isinstance(ref, str) and refs < MAX_REFS:
            target = resolve(ref, self.definitions)
            if target is not None:
                return self.typed(content, target, refs + 1)
        alternatives = options(schema)
        if alternatives:
            for option in alternatives:
                try:
                    return self.typed(content, option, refs)
                except ValueError:
                    if self.steps > MAX_STEPS:
                        raise
                    continue
            raise ValueError("the value fits none of its schema's options")
        values = schema.get("enum") if isinstance(schema.get("enum"), list) else None
        if "const" in schema:
            values = [schema["const"]]
        if values is not None and isinstance(content, str):
            for v in values:
                if XmlTree("").write(v) == content and not isinstance(v, (dict, list)):
                    return v
        kind = schema.get("type")
        if kind is None:
            kind = (
                "object"
                if "properties" in schema
                else "array"
                if "items" in schema
                else _untyped_kind(content)
            )
        if kind == "object":
            return self.object(content, schema, refs)
        if kind == "array":
            if content == "":
                return []
            if isinstance(content, str) or any(tag != "item" for tag, _ in content):
                raise ValueError("a list was expected")
            return [self.typed(c, schema.get("items", {}), refs) for _, c in content]
        if not isinstance(content, str):
            raise ValueError("a single value was expected")
        return _scalar(content, kind, schema)

    def object(self, content: Any, schema: dict[str, Any], refs: int) -> dict[str, Any]:
        if isinstance(content, str) and content:
            raise ValueError("an object was expected")
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        extra = schema.get("additionalProperties", {})
        out = {tag: self.typed(c, properties.get(tag, extra), refs) for tag, c in content or []}
        # A required member that may be null and is left out (the template writes no null
        # member) was null.
        listed = schema.get("required")
        for key in listed if isinstance(listed, list) else []:
            if isinstance(key, str) and key not in out and _allows_null(properties.get(key)):
                out[key] = None
        return out


def _scalar(content: str, kind: Any, schema: dict[str, Any]) -> Any:
    if kind in ("integer", "number"):
        if _NUMBER.fullmatch(content) is None:
            raise ValueError("a number was expected")
        number = json.loads(content)
        if kind == "integer" and not isinstance(number, int):
            raise ValueError("an integer was expected")
        return number
    if kind == "boolean":
        if content not in ("true", "false"):
            raise ValueError("true or false was expected")
        return content == "true"
    if kind == "null":
        if content:
            raise ValueError("null is written as nothing")
        return None
    if not schema and (_NUMBER.fullmatch(content) or content in ("true", "false")):
        return json.loads(content)  # a value of no declared type: as JSON would read it
    return content


def _untyped_kind(content: Any) -> str:
    if isinstance(content, str):
        return "string"
    return "array" if content and all(tag == "item" for tag, _ in content) else "object"


class _Rules(SchemaRules):
    def __init__(
        self, prefix: str, marker: str, visit: Callable[..., str], root: dict[str, Any]
    ) -> None:
        super().__init__(prefix, visit, root)
        self.marker = marker

    def fallback(self, depth: int) -> str:
        return "xt-text"

    def element(self, tag: str, content: str) -> str:
        m = self.marker
        return f"{gbnf_literal(f'{m}<{tag}>')} {content} {gbnf_literal(f'{m}</{tag}>')}"

    def body(self, schema: dict[str, Any], depth: int, refs: int) -> str:
        referenced = self.referenced(schema, depth, refs)
        if referenced is not None:
            return referenced
        values = schema.get("enum") if isinstance(schema.get("enum"), list) else None
        if "const" in schema:
            values = [schema["const"]]
        if values is not None:
            written = {XmlTree(self.marker).write(v) for v in values if v is not None}
            return " | ".join(gbnf_literal(w) for w in sorted(written)) or '""'
        alternatives = options(schema)
        if alternatives:
            return " | ".join(self.value(o, depth, refs) for o in alternatives)
        kind = schema.get("type")
        if kind == "object" or (kind is None and "properties" in schema):
            return self.members(schema, depth, refs) if depth < MAX_DEPTH else '""'
        if kind == "array" or (kind is None and "items" in schema):
            if depth >= MAX_DEPTH:
                return '""'
            item = self.value(schema.get("items", {}), depth + 1, refs)
            return f"( {self.element('item', item)} )*"
        if kind in ("integer", "number"):
            return self.visit({"type": kind}, f"{self.prefix}-{kind}")
        if kind == "boolean":
            return '( "true" | "false" )'
        if kind == "null":
            return '""'
        return "xt-text"  # a string, or a value of no declared type: written as text

    def members(self, schema: dict[str, Any], depth: int, refs: int) -> str:
        """An object's members: required ones in order, then each optional one or not; an
        object that declares no properties, any (their values as text)."""
        declared = schema.get("properties")
        if not isinstance(declared, dict):
            if schema.get("additionalProperties") is False:
                return '""'
            m = self.marker
            name = f"{_TAG_CLASS}{{1,200}}"
            member = (
                f"{gbnf_literal(m + '<')} {name} {gbnf_literal('>')} xt-text "
                f"{gbnf_literal(m + '</')} {name} {gbnf_literal('>')}"
            )
            return f"( {member} )*"
        listed = schema.get("required")
        required = {k for k in (listed if isinstance(listed, list) else []) if isinstance(k, str)}
        for name in declared:
            if not _TAG.fullmatch(name):
                raise SchemaNotSupported(
                    f"MiniMax-M3's calls cannot hold a parameter named {name[:40]!r}: its "
                    "tags take names without <, >, / or line breaks, up to 200 characters"
                )
        # A member left out where null (the template writes no null member): optional.
        parts = [
            (
                name in required and not _allows_null(sub),
                self.element(name, self.value(sub, depth + 1, refs)),
            )
            for name, sub in declared.items()
        ]
        order = [p for r, p in parts if r] + [f"( {p} )?" for r, p in parts if not r]
        return " ".join(order) or '""'
