"""How deeply a free-form JSON value nests, counted without recursion.

Values a client sends as free-form JSON (tool arguments, template variables, Responses input
items) are escaped, rendered and stored by code that recurses once per level.
"""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 64


def nesting_depth(value: Any) -> int:
    """How deeply ``value`` nests (lists and objects)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest
