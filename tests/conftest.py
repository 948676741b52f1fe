"""Shared fixtures. Real-model tests use the GGUFs that `make test` pulls into the models dir."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.app import create_app
from server.models.sources import CATALOG
from server.serving import build_server, listening_sockets
from server.settings import Settings, load_settings

MODELS_DIR = load_settings(None).models_dir.expanduser()


def model_file(package: str) -> Path:
    path = MODELS_DIR / CATALOG[package].filename
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make models` (make test does it) first")
    return path


def make_settings(**overrides: object) -> Settings:
    """Settings with both real models, small contexts and two threads (the CI machine's)."""
    models = [
        {
            "name": "smollm2",
            "aliases": ["SmolLM2-135M-Instruct"],
            "path": str(model_file("smollm2")),
            "n_ctx": 1024,
            "slots": 8,
            "threads": 2,
            "preload": True,
            "defaults": {"temperature": 0.7},
        },
        {
            "name": "gemma3-270m",
            "path": str(model_file("gemma3-270m")),
            "n_ctx": 1024,
            "slots": 2,
            "threads": 2,
        },
    ]
    # Saved KV states stay in RAM, so that every test app starts with cold caches.
    data: dict[str, object] = {
        "models": models,
        "max_queue": 8,
        "kv_cache_disk_bytes": 0,
        # Every test app its own response store.
        "responses_db": Path(tempfile.mkdtemp(prefix="hearth-responses-")) / "responses.sqlite3",
        # TestClient's requests name "testserver"; live servers are reached at 127.0.0.1.
        "allowed_hosts": ["testserver", "127.0.0.1", "localhost"],
    }
    data.update(overrides)
    return Settings.model_validate(data)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    """The app with its lifespan running, the real engine on the real models."""
    with TestClient(app) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """uvicorn serving a Hearth app on a free loopback port, in a background thread."""

    def __init__(self, app: FastAPI, settings: Settings | None = None) -> None:
        self.app = app
        self.port = free_port()
        settings = (settings or make_settings()).model_copy(update={"log_level": "warning"})
        self.server = build_server(app, settings, port=self.port)
        sockets = listening_sockets(self.server, settings)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": sockets}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=60)


def exact_reuse(settings: Settings) -> Settings:
    """The settings with flash attention off: a reused KV prefix then gives bit-identical
    logits to a fresh computation (see the README), which tests that compare the texts of
    runs with different cache histories need."""
    models = [m.model_copy(update={"flash_attn": "off"}) for m in settings.models]
    return settings.model_copy(update={"models": models})


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    # Several test modules share this server, so its slots hold prefixes computed in every
    # kind of batch; with flash attention on, a near-tie greedy token could then flip between
    # two runs of the same request.
    settings = exact_reuse(make_settings())
    with LiveServer(create_app(settings), settings) as server:
        yield server
