"""The README's settings and model-config tables name every field there is, with its flag and
environment variable, so they cannot drift from the code."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from server.models.config import ModelConfig, SamplingDefaults
from server.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
_NOT_SETTINGS = {"models", "config_dir"}


def table_after(heading: str) -> dict[str, list[str]]:
    """The first table after ``heading``: its rows by the backquoted name in the first cell."""
    lines = README[README.index(f"\n{heading}\n") :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([^`]+)`", cells[0])
        rows[name.group(1) if name else cells[0]] = cells[1:]
    return rows


def test_every_setting_is_documented_with_its_flag_and_environment_variable() -> None:
    rows = table_after("## Settings")
    rows.pop("config file", None)
    assert set(rows) == set(Settings.model_fields) - _NOT_SETTINGS
    for name, (flag, env, *_rest) in rows.items():
        annotation = Settings.model_fields[name].annotation
        if typing.get_origin(annotation) is list:  # repeatable: --api-key A --api-key B
            assert flag.startswith("`--" + name.removesuffix("s").replace("_", "-") + " "), name
        else:
            assert flag == f"`--{name.replace('_', '-')}`", name
        assert env.startswith(f"`HEARTH_{name.upper()}`"), name


def test_every_model_key_is_documented() -> None:
    rows = table_after("### Model config keys")
    sampling = rows.pop("[models.defaults]")
    assert set(rows) == set(ModelConfig.model_fields) - {"defaults"}
    for field in SamplingDefaults.model_fields:
        assert f"`{field}`" in sampling[1], field
