"""The official `openai` client, pointed at the shared live server."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import LiveServer


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=live_server.base_url + "/v1", api_key="unused", max_retries=0
    ) as sdk:
        yield sdk
