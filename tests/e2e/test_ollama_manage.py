"""Ollama's model management through the official `ollama` client, against a live Hearth whose
registry is a local server speaking the registry's protocol (tests/models/fake_hub.py) with our
real GGUF: pull with streamed progress (the client's own ProgressResponse), then chat with the
pulled model without a restart, copy, delete, upload a blob and create a model from it, and
the admin-only rule when keys are on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from server.app import create_app
from tests.conftest import LiveServer, make_settings, model_file
from tests.models.fake_hub import FakeHub, serve_hub

PARAMS = b'{"temperature": 0.2, "num_ctx": 1024}'


@pytest.fixture(scope="module")
def registry() -> Iterator[FakeHub]:
    hub = FakeHub()
    hub.manifests["library/smollm2:135m"] = [
        ("application/vnd.ollama.image.model", model_file("smollm2").read_bytes()),
        ("application/vnd.ollama.image.params", PARAMS),
    ]
    with serve_hub(hub) as running:
        yield running


@pytest.fixture(scope="module")
def server(registry: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(
        models=[],
        models_dir=tmp_path_factory.mktemp("models"),
        ollama_registry=registry.url,
    )
    with LiveServer(create_app(settings), settings) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.base_url, timeout=120) as sdk:
        yield sdk


def test_a_pull_streams_progress_and_the_model_answers_at_once(
    client: ollama.Client, registry: FakeHub
) -> None:
    assert client.list().models == []
    events = list(client.pull("smollm2:135m", stream=True))
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    size = len(model_file("smollm2").read_bytes())
    digest = "sha256:" + hashlib.sha256(model_file("smollm2").read_bytes()).hexdigest()
    layer = [e for e in events if e.digest == digest]
    assert layer and layer[-1].completed == layer[-1].total == size
    assert layer[0].status == f"pulling {digest[7:19]}"
    assert [e.completed for e in layer] == sorted(e.completed or 0 for e in layer)
    # Served without a restart, with the parameters of the registry's params layer.
    assert [m.model for m in client.list().models] == ["smollm2:135m"]
    shown = client.show("smollm2:135m")
    assert "temperature" in (shown.parameters or "")
    answer = client.chat(
        model="smollm2:135m",
        messages=[{"role": "user", "content": "Hi"}],
        options={"num_predict": 4},
    )
    assert answer.eval_count and answer.eval_count > 0
    # A second pull finds every layer in place.
    sent = registry.sent
    assert client.pull("smollm2:135m").status == "success"
    assert registry.sent == sent


def test_copy_then_delete(client: ollama.Client, server: LiveServer) -> None:
    client.pull("smollm2:135m")
    assert client.copy("smollm2:135m", "my-smol:latest").status == "success"
    names = {m.model for m in client.list().models}
    assert {"smollm2:135m", "my-smol:latest"} <= names
    answer = client.generate(model="my-smol:latest", prompt="Hi", options={"num_predict": 2})
    assert answer.done
    assert client.delete("my-smol:latest").status == "success"
    assert "my-smol:latest" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("my-smol:latest")
    assert missing.value.status_code == 404
    # The original still has its file (the copy shared it).
    assert client.generate(model="smollm2:135m", prompt="Hi", options={"num_predict": 2}).done


def test_a_model_is_created_from_an_uploaded_blob(
    client: ollama.Client, server: LiveServer, tmp_path: Path
) -> None:
    digest = client.create_blob(model_file("smollm2"))
    head = httpx.head(f"{server.base_url}/api/blobs/{digest}")
    assert head.status_code == 200
    assert httpx.head(f"{server.base_url}/api/blobs/sha256:{'0' * 64}").status_code == 404
    result = client.create(
        model="uploaded:v1", files={"model.gguf": digest}, parameters={"temperature": 0.3}
    )
    assert result.status == "success"
    answer = client.chat(
        model="uploaded:v1",
        messages=[{"role": "user", "content": "Hi"}],
        options={"num_predict": 2},
    )
    assert answer.done
    # A blob whose bytes are not its digest is refused, and not kept.
    wrong = httpx.post(f"{server.base_url}/api/blobs/sha256:{'1' * 64}", content=b"GGUF....")
    assert wrong.status_code == 400
    assert httpx.head(f"{server.base_url}/api/blobs/sha256:{'1' * 64}").status_code == 404
    with pytest.raises(ollama.ResponseError) as missing:
        client.create(model="nothing:v1", files={"model.gguf": f"sha256:{'2' * 64}"})
    assert missing.value.status_code == 400


def test_a_failed_pull_is_an_error_line_or_status(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as absent:
        client.pull("nothing:1b")
    assert absent.value.status_code == 502
    assert "not in the registry" in absent.value.error
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.pull("nothing:1b", stream=True))
    assert "not in the registry" in streamed.value.error


def test_only_an_admin_key_manages_models(registry: FakeHub, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        '[[keys]]\nname = "user"\nkey = "sk-user"\n\n[[keys]]\nname = "boss"\nkey = "sk-boss"\n'
        "admin = true\n"
    )
    settings = make_settings(
        models=[], models_dir=tmp_path / "models", ollama_registry=registry.url, api_keys_file=keys
    )
    with (
        LiveServer(create_app(settings), settings) as live,
        ollama.Client(host=live.base_url, headers={"Authorization": "Bearer sk-user"}) as user,
        ollama.Client(host=live.base_url, headers={"Authorization": "Bearer sk-boss"}) as boss,
    ):
        with pytest.raises(ollama.ResponseError) as refused:
            user.pull("smollm2:135m")
        assert refused.value.status_code == 403
        assert boss.pull("smollm2:135m").status == "success"


def test_pulls_beyond_the_bound_wait_their_turn(client: ollama.Client, server: LiveServer) -> None:
    from server.services.model_store import MAX_PULLS

    store = server.app.state.hearth.model_store
    store._pulling = MAX_PULLS  # as if that many were running
    try:
        with pytest.raises(ollama.ResponseError) as busy:
            client.pull("smollm2:135m")
        assert busy.value.status_code == 429
    finally:
        store._pulling = 0
    assert client.pull("smollm2:135m").status == "success"


def test_a_blob_upload_trickled_after_its_401_does_not_hold_the_connection(
    tmp_path: Path,
) -> None:
    """Red-team finding: an upload's deadline (a pause, not the whole body) was re-armed by
    every byte even once the request had its 401, so a keyless client trickling bytes held
    a connection for good. Now only a body the app is reading gets that deadline."""
    import socket
    import time

    settings = make_settings(models=[], models_dir=tmp_path, api_keys=["sk-edge"], body_timeout=1)
    with LiveServer(create_app(settings), settings) as live:
        sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
        head = (
            f"POST /api/blobs/sha256:{'0' * 64} HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n"
            "Content-Length: 100000000\r\n\r\n"
        )
        sock.sendall(head.encode())
        answer = b""
        started = time.monotonic()
        closed = False
        try:
            while time.monotonic() - started < 8:
                sock.settimeout(0.25)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    data = None
                except ConnectionResetError:
                    data = b""
                if data == b"":
                    closed = True
                    break
                if data:
                    answer += data
                try:
                    sock.send(b"x")
                except OSError:
                    closed = True
                    break
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 401 ")
        assert closed and time.monotonic() - started < 6


def test_another_sites_page_may_not_manage_models(server: LiveServer) -> None:
    """Keys off: a browser sends a plain-text POST from any page without asking first, and
    /api/ bodies are read as JSON whatever their type; so another site's Origin is refused."""
    cross = httpx.post(
        f"{server.base_url}/api/pull",
        content='{"model": "smollm2:135m"}',
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    assert "another site" in cross.json()["error"]
    same = httpx.post(
        f"{server.base_url}/api/pull",
        json={"model": "nothing:1b", "stream": False},
        headers={"Origin": server.base_url},
    )
    assert same.status_code == 502  # past the check (the registry has no such model)


def test_creating_a_model_again_keeps_its_blob(client: ollama.Client) -> None:
    """Red-team finding: creating a model again from the same blob deleted the blob with the
    old model (a 500, then neither model nor blob)."""
    digest = client.create_blob(model_file("smollm2"))
    for _ in range(2):
        assert client.create(model="again:v1", files={"model.gguf": digest}).status == "success"
    answer = client.generate(model="again:v1", prompt="Hi", options={"num_predict": 2})
    assert answer.done
    client.delete("again:v1")
