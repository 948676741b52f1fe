"""POST /v1/completions on the real models (SmolLM2, and Gemma-3-270M, a base model)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.sse import sse_chunks

URL = "/v1/completions"


def complete(client: TestClient, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "smollm2")
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def test_response_has_the_openai_shape(client: TestClient) -> None:
    data = complete(client, prompt="Once upon a time", max_tokens=8)
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    assert data["id"].startswith("cmpl-")
    assert data["object"] == "text_completion"
    (choice,) = data["choices"]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
    assert choice["logprobs"] is None
    assert choice["finish_reason"] in ("stop", "length")
    assert (
        data["usage"]["total_tokens"]
        == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
    )


def test_default_length_is_openais_sixteen_tokens(client: TestClient) -> None:
    data = complete(client, prompt="1, 2, 3, 4,", temperature=0)
    assert data["usage"]["completion_tokens"] <= 16


def test_gemma_base_model_completes_text(client: TestClient) -> None:
    data = complete(
        client, model="gemma3-270m", prompt="The capital of France is", temperature=0, max_tokens=12
    )
    assert data["model"] == "gemma3-270m"
    assert data["choices"][0]["text"].strip()
    assert 1 <= data["usage"]["completion_tokens"] <= 12
    assert data["usage"]["prompt_tokens"] >= 5  # Gemma adds its <bos>


def test_gemma_streams_the_same_text_as_it_returns(client: TestClient) -> None:
    body = {
        "model": "gemma3-270m",
        "prompt": "def fibonacci(n):",
        "temperature": 0,
        "max_tokens": 24,
    }
    # Both read the prompt from the cache alike: the first request only puts it there. A
    # prompt read whole and one read from the cache may round differently on some CPUs
    # (docs/development.md, "What holds on which CPU"), which is not what this compares.
    complete(client, **{**body, "max_tokens": 1})
    whole = complete(client, **body)["choices"][0]["text"]
    chunks = sse_chunks(client.post(URL, json={**body, "stream": True}))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole


def test_list_of_prompts_gives_one_choice_per_prompt_and_n(client: TestClient) -> None:
    data = complete(client, prompt=["Red is", "Blue is"], n=2, max_tokens=4)
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]


def test_token_id_prompts(client: TestClient) -> None:
    single = complete(client, prompt=[504, 3575, 282, 4649, 314], max_tokens=4, temperature=0)
    assert single["usage"]["prompt_tokens"] == 5
    many = complete(client, prompt=[[504, 3575], [4649, 314]], max_tokens=2)
    assert len(many["choices"]) == 2
    assert many["usage"]["prompt_tokens"] == 4


def test_echo_prepends_the_prompt(client: TestClient) -> None:
    complete(client, prompt="Roses are red,", max_tokens=1)  # in the cache (see above)
    data = complete(client, prompt="Roses are red,", max_tokens=5, echo=True, temperature=0)
    assert data["choices"][0]["text"].startswith("Roses are red,")
    chunks = sse_chunks(
        client.post(
            URL,
            json={
                "model": "smollm2",
                "prompt": "Roses are red,",
                "max_tokens": 5,
                "echo": True,
                "temperature": 0,
                "stream": True,
            },
        )
    )
    assert "".join(c["choices"][0]["text"] for c in chunks) == data["choices"][0]["text"]


def test_stream_with_usage(client: TestClient) -> None:
    body = {
        "model": "smollm2",
        "prompt": "Hello",
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = sse_chunks(client.post(URL, json=body))
    assert len({c["id"] for c in chunks}) == 1
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]) == 1
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] <= 6


def test_stop_string_across_tokens(client: TestClient) -> None:
    body = {
        "model": "smollm2",
        "prompt": "The alphabet: A B C D E F G H I J",
        "max_tokens": 20,
        "temperature": 0,
    }
    complete(client, **{**body, "max_tokens": 1})  # the prompt in the cache (see above)
    base = complete(client, **body)["choices"][0]["text"]
    stop = base[3:8]
    data = complete(client, **body, stop=stop)
    assert data["choices"][0]["text"] == base[: base.index(stop)]
    assert data["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("prompt", [[99_999_999], [[1, -5]]])
def test_token_ids_outside_the_vocabulary_are_refused(client: TestClient, prompt: Any) -> None:
    response = client.post(URL, json={"model": "smollm2", "prompt": prompt})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


def test_logprobs_zero_gives_the_sampled_token_alone(client: TestClient) -> None:
    body = {"model": "smollm2", "prompt": "The sky is", "max_tokens": 4, "logprobs": 0}
    logprobs = client.post("/v1/completions", json={**body, "temperature": 0}).json()["choices"][0][
        "logprobs"
    ]
    for top, logprob in zip(logprobs["top_logprobs"], logprobs["token_logprobs"], strict=True):
        assert list(top.values()) == [logprob]  # the sampled token, which OpenAI always includes
    two = client.post(
        "/v1/completions", json={**body, "logprobs": 2, "temperature": 1, "seed": 3}
    ).json()
    for top, logprob in zip(
        two["choices"][0]["logprobs"]["top_logprobs"],
        two["choices"][0]["logprobs"]["token_logprobs"],
        strict=True,
    ):
        assert 2 <= len(top) <= 3 and logprob in top.values()
