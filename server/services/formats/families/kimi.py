"""Kimi K2: ``<|tool_calls_section_begin|>`` with numbered ``functions.NAME:i`` calls."""

import re

from server.services.formats.families import THINK_TAGS, Family

FAMILY = Family("kimi", re.compile(r"<\|tool_calls_section_begin\|>"), reasoning=THINK_TAGS)
