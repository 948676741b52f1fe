from fastapi.testclient import TestClient


def test_list_models(client: TestClient) -> None:
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert ids == ["smollm2", "gemma3-270m"]
    for card in data["data"]:
        assert {"id", "object", "created", "owned_by"} <= set(card)
        assert card["object"] == "model" and card["remote"] is False
    smollm2 = data["data"][0]
    assert smollm2["loaded"] is True  # preloaded
    assert smollm2["aliases"] == ["SmolLM2-135M-Instruct"]


def test_get_model_by_name_and_alias(client: TestClient) -> None:
    assert client.get("/v1/models/smollm2").json()["id"] == "smollm2"
    assert client.get("/v1/models/SmolLM2-135M-Instruct").json()["id"] == "smollm2"


def test_unknown_model_is_404_with_an_openai_error(client: TestClient) -> None:
    response = client.get("/v1/models/gpt-4o")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "The model 'gpt-4o' does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
