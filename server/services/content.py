"""A message's content as text: the one flattener of content parts for every API family."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from server.errors import InvalidRequestError, UnsupportedFeatureError


def content_text(
    content: Any,
    *,
    param: str,
    kinds: Collection[str] = ("text",),
    refusals: bool = False,
    part_param: bool = True,
) -> str | None:
    """``content`` (None, text, or a list of parts) as one string, its text parts joined.

    ``kinds`` are the part types that carry ``text`` (each family names its own); with
    ``refusals``, a ``refusal`` part's text counts too. Any other part (an image, a file) is a
    clear 400 naming it (its ``param`` indexed by the part, with ``part_param``): the models
    Hearth serves read text only. None stays None."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"{param} must be text or a list of parts", param=param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(kind, str) and kind in kinds and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif refusals and kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise UnsupportedFeatureError(
                f"{param}: part {j} is of type {kind!r}; only text parts are supported",
                param=f"{param}[{j}]" if part_param else param,
            )
    return "".join(texts)
