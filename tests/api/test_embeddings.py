"""POST /v1/embeddings on the real models."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest
from fastapi.testclient import TestClient

URL = "/v1/embeddings"


def embed(client: TestClient, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "smollm2")
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_a_list_of_strings_gives_unit_vectors_in_order(client: TestClient) -> None:
    texts = [
        "The cat sat on the mat.",
        "A cat was sitting on a rug.",
        "Revenue grew 5% this quarter.",
    ]
    data = embed(client, input=texts)
    assert data["object"] == "list" and data["model"] == "smollm2"
    assert [d["index"] for d in data["data"]] == [0, 1, 2]
    vectors = [d["embedding"] for d in data["data"]]
    assert all(len(v) == 576 for v in vectors)  # SmolLM2-135M's hidden size
    assert all(math.isclose(math.sqrt(_cosine(v, v)), 1.0, rel_tol=1e-6) for v in vectors)
    # Mean pooling of a small chat model is crude, but the two cat sentences are closer.
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2])
    assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] > 10


def test_the_same_text_alone_or_in_a_batch_embeds_the_same(client: TestClient) -> None:
    alone = embed(client, input="hello world")["data"][0]["embedding"]
    batched = embed(client, input=["something else", "hello world"])["data"][1]["embedding"]
    assert _cosine(alone, batched) > 0.9999


def test_token_ids_embed_like_their_text(client: TestClient) -> None:
    tokens = client.post("/tokenize", json={"model": "smollm2", "text": "hello world"}).json()[
        "tokens"
    ]
    by_text = embed(client, input="hello world")["data"][0]["embedding"]
    by_tokens = embed(client, input=tokens)["data"][0]["embedding"]
    by_lists = embed(client, input=[tokens, tokens])["data"]
    assert _cosine(by_text, by_tokens) > 0.9999
    assert len(by_lists) == 2


def test_base64_is_little_endian_float32_of_the_same_vector(client: TestClient) -> None:
    floats = embed(client, input="hello")["data"][0]["embedding"]
    encoded = embed(client, input="hello", encoding_format="base64")["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == len(floats)
    assert all(
        math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7) for a, b in zip(decoded, floats, strict=True)
    )


def test_dimensions_truncate_and_renormalize(client: TestClient) -> None:
    full = embed(client, input="hello")["data"][0]["embedding"]
    short = embed(client, input="hello", dimensions=64)["data"][0]["embedding"]
    assert len(short) == 64
    assert math.isclose(math.sqrt(_cosine(short, short)), 1.0, rel_tol=1e-6)
    scale = short[0] / full[0]
    assert all(
        math.isclose(s, f * scale, rel_tol=1e-6, abs_tol=1e-9)
        for s, f in zip(short, full[:64], strict=True)
    )


def test_the_base_model_embeds_too(client: TestClient) -> None:
    data = embed(client, model="gemma3-270m", input="hello")
    assert len(data["data"][0]["embedding"]) == 640


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"input": ""}, "input", None),
        ({"input": []}, "input", None),
        ({"input": ["ok", ""]}, "input", None),
        ({"input": "x " * 1500}, "input", "context_length_exceeded"),
        ({"input": [10**9]}, "input", None),
        ({"input": "hi", "dimensions": 10_000}, "dimensions", None),
        ({"input": "hi", "dimensions": 0}, "dimensions", None),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format", None),
    ],
)
def test_bad_inputs_are_400(
    client: TestClient, body: dict[str, Any], param: str, code: str | None
) -> None:
    response = client.post(URL, json={"model": "smollm2", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


def test_an_unknown_model_is_404(client: TestClient) -> None:
    response = client.post(URL, json={"model": "text-embedding-3-small", "input": "hi"})
    assert response.status_code == 404
