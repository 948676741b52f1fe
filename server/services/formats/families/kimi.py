"""Kimi K2: ``<|tool_calls_section_begin|>`` with numbered ``functions.NAME:i`` calls."""

import re

from server.services.formats.families import Family

FAMILY = Family(
    "kimi", re.compile(r"<\|tool_calls_section_begin\|>"), reasoning=("<think>", "</think>")
)
