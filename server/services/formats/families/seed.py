"""ByteDance Seed-OSS: thinking in ``<seed:think>``; its calls (XML parameters) are still the
house format."""

import re

from server.services.formats.families import Family, Markers

FAMILY = Family(
    "seed", re.compile(r"<seed:think>"), reasoning=Markers("<seed:think>", "</seed:think>")
)
