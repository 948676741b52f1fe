"""POST /v1/chat/completions on the real SmolLM2 model."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.sse import sse_chunks
from tests.conftest import WIDE_MARGIN, chat_picks

URL = "/v1/chat/completions"
QUESTION = [{"role": "user", "content": "Name three colours."}]


def chat(client: TestClient, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "smollm2")
    body.setdefault("messages", QUESTION)
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def chat_stream(client: TestClient, **body: Any) -> list[dict[str, Any]]:
    """The chunks of a streamed chat completion (defaults as in :func:`chat`)."""
    body.setdefault("model", "smollm2")
    body.setdefault("messages", QUESTION)
    response = client.post(URL, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    return sse_chunks(response)


def stream_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content", "")
        for c in chunks
        if c["choices"] and c["choices"][0]["index"] == index
    )


def test_response_has_the_openai_shape(client: TestClient) -> None:
    data = chat(client, max_tokens=20)
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "smollm2"
    (choice,) = data["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    # OpenAI's schema puts refusal on every message.
    assert "refusal" in choice["message"] and choice["message"]["refusal"] is None
    assert choice["finish_reason"] in ("stop", "length")
    usage = data["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 20
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_answer_is_sensible(client: TestClient) -> None:
    # Asked cold, "What is the capital of France?" opens with a near tie ("The", "La" and
    # "Le" within 0.25) that a CPU's rounding decides, in French on some. After one worked
    # example every token up to "Paris" leads by 4 or more on the CPUs measured: a margin
    # no CPU's rounding can flip, checked first.
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of Italy?"},
        {"role": "assistant", "content": "The capital of Italy is Rome."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    data = chat(
        client, messages=messages, temperature=0, max_tokens=30, logprobs=True, top_logprobs=2
    )
    text = ""
    for pick in chat_picks(data["choices"][0]):
        assert pick.margin >= WIDE_MARGIN, (text, pick)
        text += pick.token
        if "Paris" in text:
            break
    assert "Paris" in text
    assert data["choices"][0]["message"]["content"].startswith(text)


def test_alias_is_served_by_its_model(client: TestClient) -> None:
    assert chat(client, model="SmolLM2-135M-Instruct", max_tokens=3)["model"] == "smollm2"


def test_max_tokens_and_max_completion_tokens_cap_the_length(client: TestClient) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        data = chat(client, temperature=0, **{field: 4})
        assert data["usage"]["completion_tokens"] == 4
        assert data["choices"][0]["finish_reason"] == "length"


def test_stream_has_role_first_one_id_one_finish_and_usage_last(client: TestClient) -> None:
    body = {
        "model": "smollm2",
        "messages": QUESTION,
        "max_tokens": 12,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = client.post(URL, json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(response)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "smollm2" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:] if c["choices"])
    finishes = [
        c["choices"][0]["finish_reason"]
        for c in chunks
        if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert len(finishes) == 1
    last_choice_chunk = [c for c in chunks if c["choices"]][-1]
    assert last_choice_chunk["choices"][0]["finish_reason"] == finishes[0]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] <= 12
    assert (
        usage_chunk["usage"]["total_tokens"]
        == usage_chunk["usage"]["prompt_tokens"] + usage_chunk["usage"]["completion_tokens"]
    )
    assert all("usage" not in c for c in chunks[:-1])


def test_stream_without_include_usage_sends_no_usage(client: TestClient) -> None:
    assert all(c["choices"] and "usage" not in c for c in chat_stream(client, max_tokens=5))


def test_streamed_text_equals_non_streamed_text_at_temperature_zero(client: TestClient) -> None:
    # Both read the prompt from the cache alike: the first request only puts it there. A
    # prompt read whole and one read from the cache may round differently on some CPUs
    # (docs/development.md, "What holds on which CPU"), which is not what this compares.
    messages = [{"role": "user", "content": "Name three colours of the sea."}]
    chat(client, messages=messages, temperature=0, max_tokens=1)
    whole = chat(client, messages=messages, temperature=0, max_tokens=40)
    chunks = chat_stream(client, messages=messages, temperature=0, max_tokens=40)
    assert stream_text(chunks) == whole["choices"][0]["message"]["content"]


def test_same_seed_gives_the_same_text(client: TestClient) -> None:
    messages = [{"role": "user", "content": "Name three colours of a flag."}]
    chat(client, messages=messages, max_tokens=1)  # the prompt in the cache (see above)
    first, second = (
        chat(client, messages=messages, temperature=1.0, seed=1234, max_tokens=30) for _ in range(2)
    )
    assert first["choices"][0]["message"] == second["choices"][0]["message"]


def test_n_gives_independent_choices(client: TestClient) -> None:
    data = chat(client, n=3, max_tokens=8, temperature=1.0, seed=5)
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert 3 <= data["usage"]["completion_tokens"] <= 24
    assert len({c["message"]["content"] for c in data["choices"]}) > 1


def test_n_streams_each_choice_with_its_own_role_and_finish(client: TestClient) -> None:
    chunks = chat_stream(client, n=2, max_tokens=5)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert sum(1 for c in mine if c["finish_reason"]) == 1
        assert mine[-1]["finish_reason"] is not None


def test_stop_string_is_not_emitted_even_across_tokens(client: TestClient) -> None:
    messages = [{"role": "user", "content": "Name three colours of a forest."}]
    chat(client, messages=messages, max_tokens=1)  # the prompt in the cache (see above)
    base = chat(client, messages=messages, temperature=0, max_tokens=40)
    text = base["choices"][0]["message"]["content"]
    # A stop string that starts inside one token and ends in another.
    stop = text[5:12]
    cut = text[: text.index(stop)]
    data = chat(client, messages=messages, temperature=0, max_tokens=40, stop=[stop, "never-x"])
    assert data["choices"][0]["message"]["content"] == cut
    assert data["choices"][0]["finish_reason"] == "stop"
    chunks = chat_stream(client, messages=messages, temperature=0, max_tokens=40, stop=stop)
    assert stream_text(chunks) == cut


def test_every_role_and_text_parts_are_accepted(client: TestClient) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "yes."}],
        },
        {"role": "assistant", "content": "yes"},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        {"role": "user", "content": "Again."},
    ]
    assert (
        chat(client, messages=messages, max_tokens=5)["choices"][0]["message"]["content"]
        is not None
    )


def test_unknown_fields_are_ignored(client: TestClient) -> None:
    assert chat(client, max_tokens=3, some_future_field={"x": 1}, user="alice")["choices"]


def test_multibyte_text_is_never_split_in_a_stream(client: TestClient) -> None:
    messages = [
        {
            "role": "user",
            "content": "Write the word for cat in Japanese, Chinese and Russian, with emoji 🐱.",
        }
    ]
    chat(client, messages=messages, max_tokens=1)  # the prompt in the cache (see above)
    chunks = chat_stream(client, messages=messages, temperature=0, max_tokens=60)
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert all("\ufffd" not in p for p in pieces)
    whole = chat(client, messages=messages, temperature=0, max_tokens=60)["choices"][0]["message"][
        "content"
    ]
    assert "".join(pieces) == whole
    assert any(ord(ch) > 127 for ch in whole)


def test_base_model_refuses_chat_with_a_clear_400(client: TestClient) -> None:
    response = client.post(URL, json={"model": "gemma3-270m", "messages": QUESTION})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "chat_template_missing"
    assert "completions" in error["message"]
