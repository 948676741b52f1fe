"""Mistral, Devstral, Ministral: ``[TOOL_CALLS]`` then a JSON list with 9-character ids
(Nemo) or ``name[CALL_ID]id[ARGS]{...}`` / ``name[ARGS]{...}`` (Small 3.2, Devstral),
thinking in ``[THINK]``."""

import re

from server.services.formats.families import Family, Markers

FAMILY = Family("mistral", re.compile(r"\[TOOL_CALLS\]"), reasoning=Markers("[THINK]", "[/THINK]"))
