"""GET /health and GET /ready."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import make_settings


def test_ready_once_preloaded_models_are_loaded(client: TestClient) -> None:
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert "smollm2" in ready.json()["loaded_models"]


def test_not_ready_when_no_model_can_be_served(tmp_path: Path) -> None:
    settings = make_settings(
        models=[{"name": "ghost", "path": str(tmp_path / "missing.gguf"), "preload": True}]
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        not_ready = client.get("/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"]["code"] == "not_ready"
        assert "ghost" in not_ready.json()["error"]["message"]


def test_not_ready_while_shutting_down() -> None:
    settings = make_settings(models=[make_settings().models[0].model_dump()])
    with TestClient(create_app(settings)) as client:
        assert client.get("/ready").status_code == 200
        client.app.state.hearth.begin_shutdown()  # type: ignore[attr-defined]
        assert client.get("/ready").status_code == 503
        assert client.get("/health").status_code == 200
