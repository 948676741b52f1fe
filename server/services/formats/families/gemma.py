"""Gemma 4: ``<|tool_call>call:NAME{key:<|"|>text<|"|>,...}<tool_call|>`` (arguments in
the syntax of :mod:`server.services.formats.gemma_args`), thinking in the ``thought`` channel."""

import re

from server.services.formats.families import Family, Markers

FAMILY = Family(
    "gemma",
    re.compile(r"<\|tool_call>call:"),
    reasoning=Markers("<|channel>thought\n", "<channel|>"),
)
