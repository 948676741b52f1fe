"""gpt-oss (Harmony): ``to=functions.NAME<|channel|>commentary json<|message|>{...}<|call|>``,
reasoning in the ``analysis`` channel."""

import re

from server.services.formats.families import Family

FAMILY = Family(
    "harmony",
    re.compile(r"<\|channel\|>"),
    reasoning=("<|channel|>analysis<|message|>", "<|end|>"),
)
