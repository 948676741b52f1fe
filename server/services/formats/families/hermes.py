"""Hermes and Qwen: ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``, thinking
in ``<think>`` (Qwen2.5, Qwen3, QwQ, Hermes 2/3, Granite 4, MiMo, Bielik). Also Hearth's house
format, for templates that know nothing of tools."""

import re

from server.services.formats.families import THINK_TAGS, Family

FAMILY = Family("hermes", re.compile(r"<tool_call>"), reasoning=THINK_TAGS)
