"""Llama 3.1/3.2/3.3: a bare ``{"name": ..., "parameters": ...}``, one call per turn (the
templates refuse more)."""

import re

from server.services.formats.families import Family

FAMILY = Family("llama3", re.compile(r"<\|start_header_id\|>.*\"parameters\"", re.S))
