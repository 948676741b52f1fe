"""Cohere Command R7B and Command A: ``<|START_ACTION|>`` and a list of numbered calls,
thinking between ``<|START_THINKING|>`` and ``<|END_THINKING|>``."""

import re

from server.services.formats.families import Family, Markers

FAMILY = Family(
    "command_r",
    re.compile(r"<\|START_ACTION\|>"),
    reasoning=Markers("<|START_THINKING|>", "<|END_THINKING|>"),
)
