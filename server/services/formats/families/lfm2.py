"""LFM2 (Liquid): Python-style calls, ``<|tool_call_start|>[get_weather(city='Paris')]
<|tool_call_end|>``. LFM2.5 8B-A1B's template writes past calls itself (its layout is learned,
family "generic"); LFM2's and LFM2.5 Instruct's leave them out of the history, so the text is
declared here (as LFM2.5's template writes it) and written into the turn."""

import re

from server.services.formats.families import THINK_TAGS, Family
from server.services.formats.layout import ARGUMENTS, NAME, CallLayout

FAMILY = Family(
    "lfm2",
    re.compile(r"List of tools: (?:<\|tool_list_start\|>)?\["),
    reasoning=THINK_TAGS,
    declared=CallLayout(
        first=("<|tool_call_start|>[", NAME, ARGUMENTS),
        following=(", ", NAME, ARGUMENTS),
        end="]<|tool_call_end|>",
        preamble="",
        separators=(", ", ": "),
        dialect="pythonic",
    ),
)
