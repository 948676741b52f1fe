"""Model families, one module each: how to tell a family's chat template, and what the
template alone does not say (the reasoning markers its models write). The call text itself
is learned from the template (:mod:`server.services.formats.layout`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from server.services.reasoning import THINK_TAGS, Markers


@dataclass(frozen=True)
class Family:
    """``detect``: a pattern found in the family's chat templates. ``reasoning``: the
    markers its models think between, or None. ``notes``: what the table of docs/api.md says."""

    name: str
    detect: re.Pattern[str]
    reasoning: Markers | None = None
    notes: str = ""
    # The call text of a family whose templates leave past calls out of the history (LFM2,
    # Granite 3.3): there is nothing to learn it from, so it is declared, and a past call is
    # written into its turn's text, as the model wrote it.
    declared: Any = None  # CallLayout (formats/layout.py imports this module)

    def matches(self, source: str) -> bool:
        return self.detect.search(source) is not None


__all__ = ["THINK_TAGS", "Family", "Markers"]
