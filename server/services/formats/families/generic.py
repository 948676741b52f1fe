"""Any other template that writes calls with JSON arguments (Apertus, Apriel, GigaChat,
MiniMax-M1, Nemotron Nano v2, Solar): its layout is learned like every family's."""

import re

from server.services.formats.families import THINK_TAGS, Family

FAMILY = Family("generic", re.compile(r""), reasoning=THINK_TAGS)
