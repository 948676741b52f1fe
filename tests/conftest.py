"""Shared fixtures. Real-model tests use the GGUFs that `make test` pulls into the models dir."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.app import create_app
from server.engine.exactness import batch_rows_match_single
from server.http_server import build_server, listening_sockets
from server.loaded_model import choose_layout, open_backend
from server.models.sources import CATALOG
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
        # Pulls go to a folder of the test's own, and never out of this machine: the hub and
        # the registry are a port where nothing listens.
        "models_dir": Path(tempfile.mkdtemp(prefix="hearth-models-")),
        "hf_endpoint": "http://127.0.0.1:9",
        "ollama_registry": "http://127.0.0.1:9",
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


# The KV layout where loading measures whether llama.cpp decodes a batch of one sequence's
# tokens bit for bit as it decodes them one at a time (server/engine/exactness.py). With flash
# attention off that never held on the CPUs measured, so loading does not ask there.
MEASURED_LAYOUT = {"flash_attn": "on", "cache_type_k": "q8_0", "cache_type_v": "q8_0"}


def measured_layout(settings: Settings) -> Settings:
    """The settings with every model in :data:`MEASURED_LAYOUT`."""
    models = [m.model_copy(update=MEASURED_LAYOUT) for m in settings.models]
    return settings.model_copy(update={"models": models})


def batches_are_exact(settings: Settings, model: str = "smollm2") -> bool:
    """What the load-time check answers for ``model`` as ``settings`` configure it, on this CPU
    and llama.cpp build. Where it answers yes, a reused prefix (generated tokens included)
    gives bit for bit a cold run's logits, and a stream beside others those of a stream alone;
    elsewhere only close ones, which can flip a near-tie greedy token (docs/development.md, "What holds on
    which CPU"). Loads the model on its own; the answer is kept for the server's own check."""
    config = next(m for m in settings.models if m.name == model)
    assert config.path is not None
    n_ctx = config.n_ctx or 1024
    layout = choose_layout(config, Path(config.path), n_ctx, settings)
    backend = open_backend(Path(config.path), config, n_ctx, layout.flash_attn)
    try:
        return batch_rows_match_single(backend)
    finally:
        backend.close()


# The most one logit moved between batch shapes on the CPUs measured (AVX2 and AVX-512) was
# 0.95, so a greedy pick that beats the runner-up by twice that is the same on every one; the
# picked tokens' logprobs moved by under 0.2, well within half of it.
WIDE_MARGIN = 2.0


@dataclass(frozen=True)
class Pick:
    """One greedy token: its text and logprob, and the most likely tokens' (it among them)."""

    token: str
    logprob: float
    top: dict[str, float]

    @property
    def margin(self) -> float:
        """The lead over the runner-up (none known: no lead)."""
        return self.logprob - max(
            (v for k, v in self.top.items() if k != self.token), default=self.logprob
        )

    def close_call(self, token: str) -> bool:
        """Whether ``token`` was within a wide margin of this pick."""
        return token in self.top and self.top[token] > self.logprob - WIDE_MARGIN


def chat_picks(choice: dict[str, Any]) -> list[Pick]:
    """The picks of a chat choice requested with ``logprobs`` and ``top_logprobs``."""
    # Read from the least likely up, so that of two tokens with one text the likelier stays.
    return [
        Pick(
            e["token"],
            e["logprob"],
            {t["token"]: t["logprob"] for t in reversed(e["top_logprobs"])},
        )
        for e in choice["logprobs"]["content"]
    ]


def completion_picks(choice: dict[str, Any]) -> list[Pick]:
    """The picks of a text completion choice requested with ``logprobs``."""
    data = choice["logprobs"]
    return [
        Pick(token, logprob, top)
        for token, logprob, top in zip(
            data["tokens"], data["token_logprobs"], data["top_logprobs"], strict=True
        )
    ]


def assert_close_runs(reference: list[Pick], other: list[Pick]) -> None:
    """Two greedy runs of one prompt whose batches were shaped differently (a reused prefix,
    other streams beside), as they agree on every CPU: while they have picked the same
    tokens, each next pick has a close logprob, and they part only at a close call, each
    taking a token the other ranked near its own. Compares the first token at least."""
    assert reference and other
    for shared, (mine, theirs) in enumerate(zip(reference, other, strict=False)):
        if mine.token != theirs.token:
            assert mine.close_call(theirs.token), (shared, mine, theirs)
            assert theirs.close_call(mine.token), (shared, mine, theirs)
            return
        assert abs(mine.logprob - theirs.logprob) < WIDE_MARGIN / 2, (shared, mine, theirs)


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    # Several test modules share this server, so its slots hold prefixes computed in every
    # kind of batch: a test that compares two runs of one request either sends it once first,
    # so that both read the prompt from the cache alike, or compares them by margins.
    settings = make_settings()
    with LiveServer(create_app(settings), settings) as server:
        yield server
