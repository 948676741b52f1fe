"""Prompt-lookup speculation on the real model: the output is exactly plain decoding's, greedy
and seeded-sampled, with logprobs and a grammar, alone and beside other streams; copying
prompts keep most guesses, and the counters show it. Loading turns speculation on only where
its check finds batches exact on this CPU and build (docs/development.md, "What holds on which CPU");
elsewhere these tests check that it stayed off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.models.config import SpeculativeConfig
from tests.conftest import (
    LiveServer,
    assert_close_runs,
    batches_are_exact,
    chat_picks,
    completion_picks,
    make_settings,
)

MODEL = "smollm2"
SOURCE = """def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def factorial(n):
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result
"""
COPYING = [
    f"Repeat this code exactly, with no changes:\n\n{SOURCE}",
    f"Rename the function factorial to fact in this code:\n\n{SOURCE}",
    "Copy this sentence: The quick brown fox jumps over the lazy dog near the river bank.",
    "Quote the first line of this poem: Shall I compare thee to a summer's day? Thou art "
    "more lovely and more temperate.",
]
FREE = [
    "Write a short story about a dragon.",
    "What is the capital of France?",
    "List three colours.",
    "Explain photosynthesis in two sentences.",
]


def settings() -> Any:
    """Flash attention with a q8_0 cache: the layout where llama.cpp computes a batch of one
    sequence's tokens exactly as single tokens, so the load-time check turns speculation on
    (`enabled` is left unset)."""
    layout = {"flash_attn": "on", "cache_type_k": "q8_0", "cache_type_v": "q8_0"}
    models = [m.model_copy(update=layout) for m in make_settings().models if m.name == MODEL]
    return make_settings(models=models)


@pytest.fixture(scope="module")
def exact() -> bool:
    """Whether loading finds batches exact here, and so turns speculation on."""
    return batches_are_exact(settings())


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(settings())) as test_client:
        yield test_client


def chat(client: TestClient, prompt: str, speculative: bool, **fields: Any) -> Any:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 48,
        "temperature": 0,
        "speculative": speculative,
        **fields,
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def speculation(client: TestClient) -> dict[str, int]:
    stats = client.app.state.hearth.registry.loaded_handle(MODEL).engine.stats()  # type: ignore[attr-defined]
    return dict(stats.speculation)


@pytest.mark.parametrize("prompt", COPYING + FREE)
def test_greedy_output_is_exactly_plain_decoding(client: TestClient, prompt: str) -> None:
    # With flash attention on, a prompt read in one long batch and one read from the cache
    # can differ in the last bits (whether or not anything is guessed), so both runs compared
    # read the prompt from the cache: the first run only fills it.
    chat(client, prompt, speculative=False, max_tokens=1)
    plain = chat(client, prompt, speculative=False)
    guessed = chat(client, prompt, speculative=True)
    assert guessed["message"]["content"] == plain["message"]["content"]
    assert guessed["finish_reason"] == plain["finish_reason"]


def test_copying_keeps_most_guesses(client: TestClient, exact: bool) -> None:
    before = speculation(client)
    chat(client, COPYING[0], speculative=True, max_tokens=80)
    after = speculation(client)
    drafted = after["drafted"] - before["drafted"]
    accepted = after["accepted"] - before["accepted"]
    if not exact:
        # Here guesses checked in one batch could change the output: loading left it off.
        assert drafted == accepted == 0
        return
    # SmolLM2 copies the code, then writes about it: the guesses hold while it copies.
    assert accepted > 20
    assert accepted >= 0.4 * drafted


def test_seeded_sampling_logprobs_and_grammars_are_unchanged(client: TestClient) -> None:
    chat(client, COPYING[2], speculative=False, max_tokens=1)  # the prompt, cached
    for fields in (
        {"temperature": 0.8, "seed": 7},
        {"logprobs": True, "top_logprobs": 2},
        {"response_format": {"type": "json_object"}},
    ):
        plain = chat(client, COPYING[2], speculative=False, **fields)
        guessed = chat(client, COPYING[2], speculative=True, **fields)
        assert guessed["message"]["content"] == plain["message"]["content"], fields
        if "logprobs" in fields:
            assert guessed["logprobs"] == plain["logprobs"]


def test_beside_other_streams_every_output_is_plain_decodings(exact: bool) -> None:
    config = settings()
    with LiveServer(create_app(config), config) as server:
        prompts = COPYING + FREE

        async def run(speculative: bool) -> list[dict[str, Any]]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as http:

                async def one(prompt: str) -> dict[str, Any]:
                    body = {
                        "model": MODEL,
                        "messages": [{"role": "user", "content": prompt}],
                        "max_tokens": 40,
                        "temperature": 0,
                        "logprobs": True,
                        "top_logprobs": 5,
                        "speculative": speculative,
                    }
                    answer = await http.post("/v1/chat/completions", json=body)
                    assert answer.status_code == 200, answer.text
                    choice: dict[str, Any] = answer.json()["choices"][0]
                    return choice

                return list(await asyncio.gather(*(one(p) for p in prompts)))

        asyncio.run(run(False))  # every prompt in the cache (see the first test)
        guessed, plain = asyncio.run(run(True)), asyncio.run(run(False))
    if exact:
        assert guessed == plain
    else:
        # Here speculation is off and batches are not exact: streams that met others in
        # other batches than last time agree as far as the margins go.
        for mine, theirs in zip(plain, guessed, strict=True):
            assert_close_runs(chat_picks(mine), chat_picks(theirs))


@pytest.mark.gemma
def test_a_sliding_window_model_past_its_window_is_unchanged() -> None:
    """Gemma 3 attends over a 512-token window in most layers: rolling back a guess must cut
    only the newest cells (not refuse because early ones left the window)."""
    # Gemma's batches are not bit-exact on the CPU (its Q4_K_M mixes weight types whose
    # kernels differ by batch size), so speculation is off unless configured, and checking
    # guesses in a batch may part from plain decoding at a close call: the runs are compared
    # by margins. The rollback past the window is what this checks.
    models = [
        m.model_copy(
            update={
                "flash_attn": "on",
                "preload": True,
                "speculative": SpeculativeConfig(enabled=True),
            }
        )
        for m in make_settings().models
        if m.name == "gemma3-270m"
    ]
    text = "The river town kept its ledgers in a stone house by the bridge, and every spring "
    text += "the clerks copied the old accounts into new books, line by line. "
    with TestClient(create_app(make_settings(models=models))) as client:

        def complete(speculative: bool) -> Any:
            body = {
                "model": "gemma3-270m",
                "prompt": text * 14,
                "max_tokens": 120,
                "temperature": 0,
                "logprobs": 5,
                "speculative": speculative,
            }
            return client.post("/v1/completions", json=body).json()

        complete(False)  # the prompt in the cache (see the first test)
        plain, guessed = complete(False), complete(True)
        assert plain["usage"]["prompt_tokens"] + 120 > 512
        assert_close_runs(
            completion_picks(plain["choices"][0]), completion_picks(guessed["choices"][0])
        )
        handle = client.app.state.hearth.registry.loaded_handle("gemma3-270m")  # type: ignore[attr-defined]
        assert handle.engine.stats().speculation["accepted"] > 50
