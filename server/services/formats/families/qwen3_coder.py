"""Qwen3-Coder, Qwen3.5, Nemotron 3, StepFun 3.5: ``<tool_call>\\n<function=NAME>`` with one
``<parameter=KEY>\\nVALUE\\n</parameter>`` per argument, thinking in ``<think>``."""

import re

from server.services.formats.families import THINK_TAGS, Family

FAMILY = Family("qwen3_coder", re.compile(r"<function=.*<parameter=", re.S), reasoning=THINK_TAGS)
