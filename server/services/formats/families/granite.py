"""Granite 3.x: ``<|tool_call|>[{"name": ..., "arguments": {...}}]``, as its template's system
prompt asks ("respond only with <|tool_call|> followed by a JSON list of tools used"). The
template leaves past calls out of the history, so the text is declared here and written into
the turn."""

import re

from server.services.formats.families import THINK_TAGS, Family
from server.services.formats.layout import ARGUMENTS, NAME, CallLayout

FAMILY = Family(
    "granite",
    re.compile(r"<\|tool_call\|>"),
    reasoning=THINK_TAGS,
    declared=CallLayout(
        first=('<|tool_call|>[{"name": "', NAME, '", "arguments": ', ARGUMENTS),
        following=('}, {"name": "', NAME, '", "arguments": ', ARGUMENTS),
        end="}]",
        preamble="",
        separators=(", ", ": "),
    ),
)
