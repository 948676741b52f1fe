"""A radix tree over token ids: which stored sequences share the longest prefix with a prompt.

Keys are token sequences (what a slot's KV cache holds, or what a saved state covers); each
key carries a set of values (slot ids, cache entry ids). Edges are compressed runs of tokens,
so a 2,000-token system prompt shared by many keys costs one edge, and a lookup walks the
prompt once, comparing runs with C-speed slice equality.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

V = TypeVar("V", bound=Hashable)


class _Node(Generic[V]):
    __slots__ = ("edges", "values")

    def __init__(self) -> None:
        # first token of the edge -> (the edge's tokens, the child below it)
        self.edges: dict[int, tuple[tuple[int, ...], _Node[V]]] = {}
        self.values: set[V] = set()

    def subtree_values(self) -> Iterator[V]:
        stack: list[_Node[V]] = [self]
        while stack:
            node = stack.pop()
            yield from node.values
            stack.extend(child for _, child in node.edges.values())


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix, by binary search over slice equality."""
    low, high = 0, min(len(a), len(b))
    if list(a[:high]) == list(b[:high]):
        return high
    while low < high:  # invariant: a[:low] == b[:low] and a[:high] != b[:high] (high > low)
        middle = (low + high + 1) // 2
        if list(a[:middle]) == list(b[:middle]):
            low = middle
        else:
            high = middle - 1
    return low


def scoped(scope: str, tokens: Sequence[int]) -> list[int]:
    """``tokens`` as a cache key within ``scope``: behind a marker no real token id can be
    (negative, from the scope's hash), so keys of different scopes share no prefix at all.
    The empty scope is the shared one, with no marker."""
    if not scope:
        return list(tokens)
    marker = -1 - int.from_bytes(hashlib.sha256(scope.encode()).digest()[:7], "big")
    return [marker, *tokens]


def scope_length(scope: str) -> int:
    """How many entries :func:`scoped` puts before the tokens."""
    return 1 if scope else 0


class PrefixTree(Generic[V]):
    """Token sequences to values, with longest-common-prefix lookup."""

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()

    def insert(self, tokens: Sequence[int], value: V) -> None:
        node, i, key = self._root, 0, tuple(tokens)
        while i < len(key):
            edge = node.edges.get(key[i])
            if edge is None:
                leaf: _Node[V] = _Node()
                node.edges[key[i]] = (key[i:], leaf)
                node = leaf
                break
            label, child = edge
            shared = common_prefix_length(label, key[i:])
            if shared < len(label):  # split the edge where the new key leaves it
                middle: _Node[V] = _Node()
                middle.edges[label[shared]] = (label[shared:], child)
                node.edges[key[i]] = (label[:shared], middle)
                child = middle
            node, i = child, i + shared
        node.values.add(value)

    def remove(self, tokens: Sequence[int], value: V) -> None:
        """Forget ``value`` under ``tokens`` (no-op if absent); prunes emptied branches."""
        path: list[tuple[_Node[V], int]] = []
        node, i, key = self._root, 0, tuple(tokens)
        while i < len(key):
            edge = node.edges.get(key[i])
            if edge is None or key[i : i + len(edge[0])] != edge[0]:
                return
            path.append((node, key[i]))
            node, i = edge[1], i + len(edge[0])
        node.values.discard(value)
        for parent, first in reversed(path):
            child = parent.edges[first][1]
            if child.values or child.edges:
                break
            del parent.edges[first]

    def longest_match(
        self, tokens: Sequence[int], accept: Callable[[V], bool] = lambda _: True
    ) -> tuple[int, V | None]:
        """The accepted value whose key shares the longest prefix with ``tokens``, and that
        length; ``(0, None)`` when no accepted value exists at all."""
        # (depth, node whose subtree holds every key sharing at least `depth` tokens)
        frontier: list[tuple[int, _Node[V]]] = [(0, self._root)]
        node, i = self._root, 0
        while i < len(tokens):
            edge = node.edges.get(tokens[i])
            if edge is None:
                break
            label, child = edge
            shared = common_prefix_length(label, tokens[i : i + len(label)])
            frontier.append((i + shared, child))
            if shared < len(label):
                break
            node, i = child, i + shared
        for depth, subtree in reversed(frontier):
            for value in subtree.subtree_values():
                if accept(value):
                    return depth, value
        return 0, None

    def prefixes_of(self, tokens: Sequence[int]) -> list[V]:
        """Values stored under keys that are prefixes of ``tokens`` (``tokens`` included)."""
        found = list(self._root.values)
        node, i = self._root, 0
        while i < len(tokens):
            edge = node.edges.get(tokens[i])
            if edge is None or list(tokens[i : i + len(edge[0])]) != list(edge[0]):
                break
            node, i = edge[1], i + len(edge[0])
            found.extend(node.values)
        return found

    def __contains__(self, value: object) -> bool:
        return any(v == value for v in self._root.subtree_values())
