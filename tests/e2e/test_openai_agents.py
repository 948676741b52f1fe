"""The OpenAI Agents SDK, as a user runs it: a default Agent (the Responses API) with one
function tool, pointed at the live server on SmolLM2, tracing off."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)

from tests.conftest import LiveServer

calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    calls.append(city)
    return f"It is sunny in {city}."


@pytest.fixture
def sdk(live_server: LiveServer) -> Iterator[None]:
    set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=live_server.base_url + "/v1", api_key="unused")
    set_default_openai_client(client, use_for_tracing=False)
    yield


def test_a_default_agent_calls_its_tool_and_answers(sdk: None) -> None:
    agent = Agent(
        name="Weather",
        instructions="Use the tool, then answer in one sentence.",
        tools=[get_weather],
        model="smollm2",
        # The first turn must call the tool; the SDK then lets the model choose again.
        model_settings=ModelSettings(
            tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=200
        ),
    )
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    assert len(calls) >= 1
    assert isinstance(result.final_output, str) and result.final_output.strip()
    kinds = [item.type for item in result.new_items]
    assert "tool_call_item" in kinds and "tool_call_output_item" in kinds
