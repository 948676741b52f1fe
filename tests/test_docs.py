"""The docs stay true: the settings and model-config tables (docs/configuration.md) name every
field there is, with its flag and environment variable, so they cannot drift from the code;
every link between the README and the docs leads somewhere; the README stays short."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from server.models.config import ModelConfig, SamplingDefaults
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
_NOT_SETTINGS = {"models", "config_dir"}


def table_after(heading: str) -> dict[str, list[str]]:
    """The first table after ``heading``: its rows by the backquoted name in the first cell."""
    lines = CONFIGURATION[CONFIGURATION.index(f"\n{heading}\n") :].splitlines()
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
    rows = table_after("# Settings")
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
    rows = table_after("## Model config keys")
    sampling = rows.pop("[models.defaults]")
    assert set(rows) == set(ModelConfig.model_fields) - {"defaults"}
    for field in SamplingDefaults.model_fields:
        assert f"`{field}`" in sampling[1], field


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    text = re.sub(r"<[^>]+>", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def outside_code(path: Path) -> list[str]:
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    found = set()
    for line in outside_code(path):
        heading = re.match(r"#{1,6} (.*)", line)
        if heading:
            found.add(slug(heading.group(1)))
        found.update(re.findall(r'<a id="([^"]+)">', line))
    return found


def test_every_link_of_the_readme_and_the_docs_leads_somewhere() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for line in outside_code(page):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                linked = page.parent / path if path else page
                assert linked.exists(), f"{page.name}: {target}"
                if anchor and linked.suffix == ".md":
                    assert anchor in anchors(linked), f"{page.name}: {target}"
                checked += 1
    assert checked > 20


def test_the_readme_is_a_start_and_the_reference_is_in_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in ("api.md", "configuration.md", "operations.md", "development.md"):
        assert f"(docs/{page})" in readme, page
