"""POST /tokenize and POST /detokenize."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient


def test_tokenize_and_detokenize_round_trip(client: TestClient) -> None:
    text = "Hearth serves small models, fast. Ünïcödé too."
    tokenized = client.post(
        "/tokenize", json={"model": "smollm2", "text": text, "add_special": False}
    )
    assert tokenized.status_code == 200
    data = tokenized.json()
    assert data["count"] == len(data["tokens"]) > 5
    assert data["max_model_len"] == 1024 and data["model"] == "smollm2"
    back = client.post(
        "/detokenize", json={"model": "SmolLM2-135M-Instruct", "tokens": data["tokens"]}
    )
    assert back.json() == {"model": "smollm2", "text": text}


def test_add_special_adds_the_start_token_where_the_model_uses_one(client: TestClient) -> None:
    with_bos = client.post("/tokenize", json={"model": "gemma3-270m", "text": "hi"}).json()[
        "tokens"
    ]
    without = client.post(
        "/tokenize", json={"model": "gemma3-270m", "text": "hi", "add_special": False}
    ).json()["tokens"]
    assert with_bos[1:] == without and len(with_bos) == len(without) + 1


def test_token_counts_agree_with_completion_usage(client: TestClient) -> None:
    prompt = "Count these tokens, please."
    count = client.post("/tokenize", json={"model": "smollm2", "text": prompt}).json()["count"]
    usage = client.post(
        "/v1/completions", json={"model": "smollm2", "prompt": prompt, "max_tokens": 1}
    ).json()["usage"]
    assert usage["prompt_tokens"] == count


def test_bad_token_ids_and_unknown_models_are_errors(client: TestClient) -> None:
    bad = client.post("/detokenize", json={"model": "smollm2", "tokens": [-1]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    unknown = client.post("/tokenize", json={"model": "nope", "text": "x"})
    assert unknown.status_code == 404


IM_START, IM_END = 1, 2  # SmolLM2's <|im_start|> and <|im_end|>


def test_text_is_plain_text_unless_special_parsing_is_asked_for(client: TestClient) -> None:
    body = {"model": "smollm2", "text": "<|im_start|>", "add_special": False}
    plain = client.post("/tokenize", json=body).json()["tokens"]
    parsed = client.post("/tokenize", json={**body, "parse_special": True}).json()["tokens"]
    assert parsed == [IM_START]
    assert IM_START not in plain and len(plain) > 1


def test_messages_are_tokenized_as_chat_renders_them(client: TestClient) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    tokens = client.post("/tokenize", json={"model": "smollm2", "messages": messages}).json()
    # system, user, and the assistant turn the generation prompt opens.
    assert tokens["tokens"].count(IM_START) == 3 and tokens["tokens"].count(IM_END) == 2
    chat = client.post(
        "/v1/chat/completions", json={"model": "smollm2", "messages": messages, "max_tokens": 1}
    ).json()
    assert chat["usage"]["prompt_tokens"] == tokens["count"]


def test_exactly_one_of_text_and_messages(client: TestClient) -> None:
    both = {"model": "smollm2", "text": "a", "messages": [{"role": "user", "content": "a"}]}
    assert client.post("/tokenize", json=both).status_code == 400
    assert client.post("/tokenize", json={"model": "smollm2"}).status_code == 400


def test_text_longer_than_the_context_could_hold_is_refused_before_tokenizing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1024 tokens of SmolLM2's longest (162 bytes) hold 165,888 characters at most: anything
    # longer is refused without occupying a preparation thread (it used to take both for
    # seconds, while every other key's chat waited).
    state = client.app.state.hearth  # type: ignore[attr-defined]
    prepared: list[object] = []
    run = state.prep.run

    async def counted(work: Any, *args: Any, **kwargs: Any) -> Any:
        prepared.append(work)
        return await run(work, *args, **kwargs)

    monkeypatch.setattr(state.prep, "run", counted)
    refused = client.post("/tokenize", json={"model": "smollm2", "text": "a " * 100_000})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "text"
    assert prepared == []
    # Another request is prepared and answered as usual.
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert chat.status_code == 200 and len(prepared) == 1


def test_a_long_answer_is_written_whole_in_pieces(client: TestClient) -> None:
    # Just under the bound: tens of thousands of tokens, written a piece at a time (each piece
    # waits for the client to take the previous ones) and still one JSON object.
    text = "a " * 80_000
    answer = client.post("/tokenize", json={"model": "smollm2", "text": text, "add_special": False})
    assert answer.status_code == 200
    data = answer.json()
    assert data["model"] == "smollm2" and data["max_model_len"] == 1024
    assert data["count"] == len(data["tokens"]) > 40_000
    back = client.post("/detokenize", json={"model": "smollm2", "tokens": data["tokens"]})
    assert back.json()["text"] == text
