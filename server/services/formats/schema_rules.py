"""What the grammar writers of the argument syntaxes that are not compact JSON share
(:mod:`.indented_args`, :mod:`.xml_tree_args`): rules named in order, one rule per schema
and depth, ``$ref`` resolved within the function's own definitions, and a schema's options
(``anyOf``/``oneOf`` with the keywords beside them, a type list)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# How many $ref hops one value may take before it is taken as any value.
MAX_REFS = 16


def definitions_of(root: Any) -> dict[str, Any]:
    """A function's parameters' ``$defs`` and ``definitions``, where they are objects."""
    if not isinstance(root, dict):
        return {}
    return {k: root[k] for k in ("$defs", "definitions") if isinstance(root.get(k), dict)}


def resolve(ref: str, definitions: Mapping[str, Any]) -> Any:
    """The schema a local reference (``#/$defs/X``) points to, or None."""
    for word in ("$defs", "definitions"):
        head = f"#/{word}/"
        if ref.startswith(head):
            found = definitions.get(word, {})
            return found.get(ref[len(head) :]) if isinstance(found, dict) else None
    return None


def options(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The schemas a value may match one of: ``anyOf``/``oneOf`` options, each with the
    keywords beside them (an option may say only which members are required), or a type
    list's types; none for a plain schema."""
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
    found = [
        {**rest, **o}
        for w in ("anyOf", "oneOf")
        if isinstance(schema.get(w), list)
        for o in schema[w]
        if isinstance(o, dict)
    ]
    kind = schema.get("type")
    if not found and isinstance(kind, list):
        found = [{**schema, "type": k} for k in kind if isinstance(k, str)]
    return found


class SchemaRules:
    """Writes one function's rules: ``value`` gives the rule for a value under a schema at a
    depth (written once per schema and depth by ``body``, a subclass's); anything that is
    not a schema gets ``fallback``."""

    def __init__(self, prefix: str, visit: Callable[..., str], root: dict[str, Any]) -> None:
        self.prefix, self.visit = prefix, visit
        self.out: list[str] = []
        self.count = 0
        self.definitions = definitions_of(root)
        self.done: dict[tuple[int, int], str] = {}  # (id(schema), depth) -> its rule
        # The schemas of ``done``, kept: one made on the way and freed could leave its id
        # to another.
        self.kept: list[Any] = []

    def rule(self, body: str) -> str:
        name = f"{self.prefix}-{self.count}"
        self.count += 1
        self.out.append(f"{name} ::= {body}")
        return name

    def value(self, schema: Any, depth: int, refs: int) -> str:
        """A rule (its name) for a value under ``schema`` at ``depth``."""
        if not isinstance(schema, dict):
            return self.fallback(depth)
        key = (id(schema), depth)
        if key not in self.done:
            self.kept.append(schema)
            self.done[key] = self.rule(self.body(schema, depth, refs))
        return self.done[key]

    def referenced(self, schema: dict[str, Any], depth: int, refs: int) -> str | None:
        """The rule of the schema ``schema``'s ``$ref`` points to (the fallback past
        MAX_REFS hops or where it points nowhere), or None where it has none."""
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            return None
        target = resolve(ref, self.definitions)
        if target is None or refs >= MAX_REFS:
            return self.fallback(depth)
        return self.value(target, depth, refs + 1)

    def body(self, schema: dict[str, Any], depth: int, refs: int) -> str:
        raise NotImplementedError

    def fallback(self, depth: int) -> str:
        raise NotImplementedError
