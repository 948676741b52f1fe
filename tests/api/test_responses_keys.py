"""With API keys on, a stored response belongs to the key that made it: for another key it
does not exist, to read, to list, to delete or to continue."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = make_settings(
        api_keys=["sk-alice", "sk-bob"],
        models=[m for m in make_settings().models if m.name == "smollm2"],
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


ALICE = {"Authorization": "Bearer sk-alice"}
BOB = {"Authorization": "Bearer sk-bob"}


def test_another_keys_stored_response_does_not_exist_for_it(client: TestClient) -> None:
    body = {"model": "smollm2", "input": "My secret is 42.", "max_output_tokens": 4}
    made = client.post("/v1/responses", json=body, headers=ALICE)
    assert made.status_code == 200, made.text
    response_id = made.json()["id"]
    assert client.get(f"/v1/responses/{response_id}", headers=ALICE).status_code == 200
    for method, path in [
        ("GET", f"/v1/responses/{response_id}"),
        ("GET", f"/v1/responses/{response_id}/input_items"),
        ("DELETE", f"/v1/responses/{response_id}"),
    ]:
        answer = client.request(method, path, headers=BOB)
        assert answer.status_code == 404, (method, path)
        assert answer.json()["error"]["code"] == "not_found"
    follow = {**body, "previous_response_id": response_id}
    refused = client.post("/v1/responses", json=follow, headers=BOB)
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "previous_response_not_found"
    assert client.post("/v1/responses", json=follow, headers=ALICE).status_code == 200
    items = client.get(f"/v1/responses/{response_id}/input_items", headers=ALICE).json()
    assert [i["content"] for i in items["data"]] == ["My secret is 42."]
