"""DeepSeek R1 and V3: the tool-calls-begin token, then fenced JSON arguments, thinking in
``<think>``."""

import re

from server.services.formats.families import THINK_TAGS, Family

# The fullwidth bars and the block character are DeepSeek's own.
_OPEN = "<\uff5ctool\u2581calls\u2581begin\uff5c>"

FAMILY = Family("deepseek", re.compile(re.escape(_OPEN)), reasoning=THINK_TAGS)
