"""Models named on the command line (``hearth serve ./my-model.gguf``, ``hearth chat
gemma3-270m``, ``hearth serve hf:user/repo:Q4_K_M``) instead of in a config file: GGUF files,
each named after its file, models to pull, and the packaged models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from server.errors import ModelSourceError
from server.models.pull import is_reference, reference_name
from server.models.sources import CATALOG


def model_entries(arguments: list[str]) -> list[dict[str, Any]]:
    """Config entries for ``arguments``, loaded at start (a model named on the command line
    is the one to serve)."""
    entries: list[dict[str, Any]] = []
    taken: set[str] = set()
    for argument in arguments:
        path = Path(argument).expanduser()
        if argument in CATALOG and not path.is_file():
            entry: dict[str, Any] = {"name": argument, "package": argument}
        elif is_reference(argument) and not path.is_file():
            entry = {"name": reference_name(argument), "source": argument}
        elif path.is_file():
            entry = {"name": _name_for(path), "path": str(path.resolve())}
        elif path.suffix.lower() == ".gguf" or argument.startswith((".", "/", "~")):
            raise ModelSourceError(f"{argument}: no such file")
        else:
            known = ", ".join(sorted(CATALOG))
            raise ModelSourceError(
                f"'{argument}' is neither a GGUF file, a model to pull (hf:user/repo:QUANT, "
                f"https://.../model.gguf) nor a packaged model ({known})"
            )
        name, n = entry["name"], 2
        while entry["name"] in taken:  # two files called model.gguf: model, model-2
            entry["name"], n = f"{name}-{n}", n + 1
        taken.add(entry["name"])
        entries.append({**entry, "preload": True})
    return entries


def _name_for(path: Path) -> str:
    """The file's name without its extension, in characters clients put in a model name
    without quoting: ``My Model.Q4_K_M.gguf`` is ``My-Model.Q4_K_M``."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    return re.sub(r"[^A-Za-z0-9._:-]+", "-", stem).strip("-.:") or "model"
