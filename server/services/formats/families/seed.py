"""ByteDance Seed-OSS: thinking in ``<seed:think>``; calls as ``<function=NAME>`` with
``<parameter=...>`` XML, objects in them as Python writes them."""

import re

from server.services.formats.families import Family, Markers

FAMILY = Family(
    "seed", re.compile(r"<seed:think>"), reasoning=Markers("<seed:think>", "</seed:think>")
)
