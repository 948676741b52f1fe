"""MiniMax: M2's ``<minimax:tool_call>`` with ``<invoke name="NAME">`` and one
``<parameter name="KEY">`` per argument, thinking in ``<think>``; M3's tags each behind its
``]<]minimax[>[`` marker, arguments as an XML tree, thinking in ``<mm:think>`` (a template
without those markers falls back to ``<think>``)."""

import re

from server.services.formats.families import Family, Markers

FAMILY = Family(
    "minimax",
    re.compile(r"<minimax:tool_call>|\]<\]minimax\[>\["),
    reasoning=Markers("<mm:think>", "</mm:think>"),
)
