"""Hostile requests against a real server in its own process.

A request that aborts llama.cpp kills the process it runs in; in-process, that would be the
test run itself. Here the server is `hearth serve` in a subprocess, so a test can send the
request and then check what a team would check: the process is alive, `/health` answers, a
normal chat still works, and no slot, queue entry or model lease is left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, model_file

CHAT = "/v1/chat/completions"
HELLO = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def write_config(
    path: Path, settings: dict[str, Any], models: list[dict[str, Any]], port: int = 0
) -> Path:
    """A config file; ``{port}`` in a model's string values becomes the server's own port
    (for a remote model served by the same server)."""

    def value(v: Any) -> str:
        return _toml_value(v.replace("{port}", str(port)) if isinstance(v, str) else v)

    lines = [f"{key} = {value(v)}" for key, v in settings.items()]
    for model in models:
        lines.append("\n[[models]]")
        lines += [f"{key} = {value(v)}" for key, v in model.items()]
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())  # written as meant
    return path


def smollm2(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "smollm2",
        "path": model_file("smollm2"),
        "n_ctx": 1024,
        "slots": 4,
        "threads": 2,
        "preload": True,
        "flash_attn": "off",
        **overrides,
    }


class ServerProcess:
    """`python -m server serve` on a free loopback port, its log in a file."""

    def __init__(self, tmp: Path, settings: dict[str, Any], models: list[dict[str, Any]]) -> None:
        self.port = free_port()
        base = {
            "kv_cache_disk_bytes": 0,
            "log_level": "info",
            "kv_cache_dir": tmp / "kv",
            "responses_db": tmp / "responses.sqlite3",
        }
        self.config = write_config(tmp / "hearth.toml", {**base, **settings}, models, self.port)
        self.log_path = tmp / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.headers: dict[str, str] = {}
        self.args: list[str] = []  # more command-line flags

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        with self.log_path.open("wb") as log:
            command = [sys.executable, "-m", "server", "serve", "--config", str(self.config)]
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at start:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not become ready:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> httpx.Client:
        options: dict[str, Any] = {"timeout": 120, "headers": self.headers, **kwargs}
        return httpx.Client(base_url=self.base_url, **options)

    def gauges(self) -> dict[str, float]:
        """Engine gauges summed over models: busy slots, queued requests, model leases."""
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        wanted = {"hearth_slots_busy", "hearth_queue_depth", "hearth_model_requests_active"}
        totals = dict.fromkeys(wanted, 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    totals[sample.name] += sample.value
        return totals

    def assert_recovered(self) -> None:
        """Alive, healthy, serving, and nothing held: what every hostile test ends with."""
        assert self.process is not None and self.process.poll() is None, (
            f"the server process died:\n{self.log()[-3000:]}"
        )
        with self.client() as http:
            assert http.get("/health").json() == {"status": "ok"}
            answer = http.post(CHAT, json=HELLO)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"]
        deadline = time.monotonic() + 15
        while (gauges := self.gauges()) and any(gauges.values()):
            assert time.monotonic() < deadline, f"still held after the request: {gauges}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a module's hostile requests: SmolLM2 with 4 slots."""
    process = ServerProcess(tmp_path_factory.mktemp("hostile"), {"max_queue": 16}, [smollm2()])
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.fixture(scope="session")
def smollm2_pieces() -> list[bytes]:
    """Every SmolLM2 token's text, by id (read from the GGUF's vocabulary alone)."""
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(model_file("smollm2")).encode(), params)
    assert model
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        buf = ctypes.create_string_buffer(512)
        pieces = []
        for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
            n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
            pieces.append(buf.raw[:n])
        return pieces
    finally:
        llama_cpp.llama_model_free(model)


def banning(pieces: list[bytes], prefix: bytes) -> dict[str, int]:
    """A logit_bias that bans every token whose text starts with ``prefix``."""
    return {str(token): -100 for token, piece in enumerate(pieces) if piece.startswith(prefix)}
