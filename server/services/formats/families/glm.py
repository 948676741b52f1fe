"""GLM 4.6/4.7 and the templates written after it (Laguna, Ling, Spark, Hunyuan):
``<tool_call>NAME`` with ``<arg_key>KEY</arg_key><arg_value>VALUE</arg_value>`` pairs,
thinking in ``<think>``."""

import re

from server.services.formats.families import THINK_TAGS, Family

FAMILY = Family("glm", re.compile(r"<arg_key"), reasoning=THINK_TAGS)
