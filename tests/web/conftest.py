"""A real browser for the web page: Playwright driving Debian's chromium package.

Playwright's own browser download is not reachable here, so it is pointed at the system
binary. Without it the tests skip, saying how to install
it; `.ci/run` installs it, so CI runs them. With HEARTH_SCREENSHOTS=DIR the tests also save
a screenshot of each view there (`make screenshots` refreshes docs/)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = os.environ.get("HEARTH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's notes advise: no sandbox (root in CI), and no background networking (the
# network is closed: its connection attempts only make noise).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"no chromium at {CHROMIUM}: install Debian's package (sudo apt-get install "
            "chromium) or set HEARTH_CHROMIUM to a Chromium binary"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def screenshot(page: Page, name: str) -> None:
    """Save ``page`` as ``name``.png under $HEARTH_SCREENSHOTS, when set."""
    folder = os.environ.get("HEARTH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))
