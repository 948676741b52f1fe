"""Functionary v3.1 (``<function=NAME>{...}</function>``) and v3.2 (``NAME\\n{...}`` after
``>>>``)."""

import re

from server.services.formats.families import Family

FAMILY = Family("functionary", re.compile(r">>>|start with <function="))
