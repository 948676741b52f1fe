"""Model families, one module each: how to tell a family's chat template, and what the
template alone does not say (the reasoning markers its models write). The call text itself
is learned from the template (:mod:`server.services.formats.layout`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.services.reasoning import THINK_TAGS, Markers


@dataclass(frozen=True)
class Family:
    """``detect``: a pattern found in the family's chat templates. ``reasoning``: the
    markers its models think between, or None. ``notes``: what the README's table says."""

    name: str
    detect: re.Pattern[str]
    reasoning: Markers | None = None
    notes: str = ""

    def matches(self, source: str) -> bool:
        return self.detect.search(source) is not None


__all__ = ["THINK_TAGS", "Family", "Markers"]
