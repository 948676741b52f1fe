"""POST /tokenize and POST /detokenize."""

from __future__ import annotations

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
