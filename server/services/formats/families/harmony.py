"""gpt-oss (Harmony): ``to=functions.NAME<|channel|>commentary json<|message|>{...}<|call|>``,
reasoning in the ``analysis`` channel."""

import re

from server.services.formats.families import Family, Markers

FAMILY = Family(
    "harmony",
    re.compile(r"<\|channel\|>"),
    reasoning=Markers(
        "<|channel|>analysis<|message|>",
        "<|end|>",
        # The answer follows in the final channel, in a message of its own or not; a call in
        # the commentary channel, whose recipient (" to=functions.NAME") starts the call.
        (
            "<|start|>assistant<|channel|>final<|message|>",
            "<|channel|>final<|message|>",
            "<|start|>assistant<|channel|>commentary",
            "<|channel|>commentary",
        ),
    ),
)
