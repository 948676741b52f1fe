"""DeepSeek: R1's tool-calls-begin token and fenced JSON arguments; V3.2 and V4's DSML
``invoke``/``parameter`` tags (a parameter says whether its value is a string); thinking in
``<think>``."""

import re

from server.services.formats.families import THINK_TAGS, Family

# The fullwidth bars and the block character are DeepSeek's own.
_OPEN = "<\uff5ctool\u2581calls\u2581begin\uff5c>"

FAMILY = Family("deepseek", re.compile(re.escape(_OPEN) + "|DSML"), reasoning=THINK_TAGS)
