"""MiniMax M2: ``<minimax:tool_call>`` with ``<invoke name="NAME">`` and one
``<parameter name="KEY">`` per argument, thinking in ``<think>``."""

import re

from server.services.formats.families import THINK_TAGS, Family

FAMILY = Family("minimax", re.compile(r"<minimax:tool_call>"), reasoning=THINK_TAGS)
