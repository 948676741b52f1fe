"""Gemma 4's argument syntax: ``{city:<|"|>Paris<|"|>,days:3,metric:true,note:None}``.

Keys are bare and sorted (the template's ``dictsort``), strings sit between ``<|"|>`` markers
and are written raw, ``,`` and ``:`` with no space, booleans as JSON, null as Python's
``None``, numbers as Python writes them. Here: how a value is written, where the arguments
end as they stream in, their reading back into JSON, and the grammar of values in this form
(the exact-JSON rules of :mod:`server.engine.grammar`, rewritten).
"""

from __future__ import annotations

import json
import re
from typing import Any

from server.services.formats.params import without_rule

QUOTE = '<|"|>'
SEPARATORS = (",", ":")
# How deep a value may nest before it is not read (the JSON reader's bound is as tight).
MAX_DEPTH = 64

# What the arguments' text starts with.
opening = "{"


def write(value: Any) -> str:
    """``value`` as the template writes a call's arguments."""
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "None"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{write(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ",".join(write(v) for v in value) + "]"
    return str(value)


class Scan:
    """Finds where the arguments (an object) end, as their text arrives: braces and brackets
    outside strings, strings between ``<|"|>`` markers (which may arrive split)."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.matched = 0  # how much of a marker the text so far ends with
        self.done = False

    def feed(self, text: str) -> int:
        """How much of ``text`` the object takes to its end, or -1: all, and more to come."""
        for i, ch in enumerate(text):
            if ch == QUOTE[self.matched]:
                self.matched += 1
                if self.matched == len(QUOTE):
                    self.in_string, self.matched = not self.in_string, 0
                continue
            self.matched = 1 if ch == QUOTE[0] else 0
            if self.in_string:
                continue
            if ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
        return -1


def to_json(text: str, schema: Any = None) -> str:
    """Arguments written in this form as JSON text; ValueError if they are not."""
    value, at = _read(text, 0, 0)
    if at != len(text):
        raise ValueError("text after the arguments")
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_KEY = re.compile(r"[^:,{}\[\]]+")
_WORDS = {"true": True, "false": False, "None": None, "null": None}


def _read(text: str, at: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise ValueError("the arguments nest too deep")
    if text.startswith(QUOTE, at):
        end = text.find(QUOTE, at + len(QUOTE))
        if end < 0:
            raise ValueError("a string without its end")
        return text[at + len(QUOTE) : end], end + len(QUOTE)
    if text.startswith("{", at):
        out: dict[str, Any] = {}
        at += 1
        while not text.startswith("}", at):
            if out:
                at = _expect(text, at, ",")
            key = _KEY.match(text, at)
            if key is None:
                raise ValueError("a key was expected")
            at = _expect(text, key.end(), ":")
            out[key.group(0)], at = _read(text, at, depth + 1)
        return out, at + 1
    if text.startswith("[", at):
        items: list[Any] = []
        at += 1
        while not text.startswith("]", at):
            if items:
                at = _expect(text, at, ",")
            item, at = _read(text, at, depth + 1)
            items.append(item)
        return items, at + 1
    return read_scalar(text, at, _WORDS)


def read_scalar(text: str, at: int, words: dict[str, Any]) -> tuple[Any, int]:
    """A word (``true``, ``None``: ``words`` says which) or a JSON number at ``at``, and
    where it ends; ValueError for anything else."""
    for word, value in words.items():
        if text.startswith(word, at):
            return value, at + len(word)
    number = _NUMBER.match(text, at)
    if number is None or not number.group(0):
        raise ValueError("a value was expected")
    return json.loads(number.group(0)), number.end()


def _expect(text: str, at: int, mark: str) -> int:
    if not text.startswith(mark, at):
        raise ValueError(f"{mark!r} was expected")
    return at + 1


# A key literal of the exact-JSON rules ("\"city\"" space ":"), a string literal, "null".
_KEY_LITERAL = re.compile(r'"\\"((?:[^"\\]|\\.)*)\\"" space ":"')
_STRING_LITERAL = re.compile(r'"\\"((?:[^"\\]|\\.)*)\\""')
_QUOTE_LITERAL = '"<|\\"|>"'


def spelled(rules: str) -> str:
    """Exact-JSON rules (written with ``,`` and ``:``) rewritten to values in this form."""
    lines = []
    for line in rules.splitlines():
        if line.startswith("char ::= "):
            # A string's text may not hold the marker that ends it (nor, character by
            # character, "<|").
            lines.extend(without_rule(QUOTE, "gemma-text"))
            lines.append('char ::= [^<] | "<" [^|]')
            continue
        head, sep, body = line.partition(" ::= ")
        if not sep:
            lines.append(line)
            continue
        body = body.replace('"null"', '"None"')  # before keys lose their quotes ("null": 1)
        body = _KEY_LITERAL.sub(lambda m: f'"{m.group(1)}" ":"', body)
        body = body.replace('"\\"" char* "\\""', f"{_QUOTE_LITERAL} gemma-text {_QUOTE_LITERAL}")
        body = _STRING_LITERAL.sub(lambda m: f'"<|\\"|>{m.group(1)}<|\\"|>"', body)
        body = body.replace('"\\""', _QUOTE_LITERAL)
        # Keys of free-form objects are bare as well.
        body = body.replace('string ":"', 'gemma-key ":"')
        lines.append(head + sep + body)
    lines.append('gemma-key ::= [^:,{}"<\\[\\]\\x00-\\x1F]+')
    return "\n".join(lines)
