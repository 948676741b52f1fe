"""GET / (the page for browsers, a line of text for other clients), its files, and GET
/status, the JSON its status view reads."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import make_settings

BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def test_a_browser_gets_the_page_and_other_clients_a_line_of_text(client: TestClient) -> None:
    page = client.get("/", headers=BROWSER)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/ui/app.js"' in page.text
    assert '<script src="/ui/markdown.js"' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    for path, kind in (
        ("/ui/app.js", "text/javascript"),
        ("/ui/markdown.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ):
        asset = client.get(path)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    # Ollama's command line (and curl) ask for / with no HTML in Accept.
    plain = client.get("/")
    assert plain.headers["content-type"].startswith("text/plain") and "running" in plain.text
    assert page.headers["vary"] == plain.headers["vary"] == "Accept"


def test_the_page_can_be_turned_off() -> None:
    settings = make_settings(web_ui=False, models=[])
    with TestClient(create_app(settings)) as client:
        assert client.get("/", headers=BROWSER).headers["content-type"].startswith("text/plain")
        missing = client.get("/ui/app.js")
        assert missing.status_code == 404
        assert "web_ui" in missing.json()["error"]["message"]


def test_status_reports_each_model_and_what_it_did(client: TestClient) -> None:
    before = client.get("/status").json()
    reply = client.post(
        "/v1/completions", json={"model": "smollm2", "prompt": "Hello", "max_tokens": 5}
    )
    generated = reply.json()["usage"]["completion_tokens"]
    status = client.get("/status").json()
    models = {m["name"]: m for m in status["models"]}
    old = {m["name"]: m for m in before["models"]}
    smollm2 = models["smollm2"]
    assert smollm2["loaded"] is True and smollm2["slots"] == 8
    assert smollm2["completion_tokens"] == old["smollm2"]["completion_tokens"] + generated
    assert smollm2["prefix_cache_hits"] + smollm2["prefix_cache_misses"] >= 1
    # Loading chose its flash attention by timing both on this CPU (or remembered doing so).
    assert smollm2["flash_attn"] in ("on", "off")
    assert smollm2["flash_attn_source"] in ("measured", "remembered")
    assert set(smollm2["layout_rates"]) == {"off", "on"}
    assert smollm2["speculation"] is False or smollm2["flash_attn"] == "on"
    assert models["gemma3-270m"]["slots"] == 0 or models["gemma3-270m"]["loaded"]
    assert status["keys"] is None
    assert status["uptime_seconds"] > 0


def test_status_needs_a_key_and_shows_keys_usage_to_an_admin_only(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        '[[keys]]\nname = "alice"\nkey = "sk-alice"\n\n'
        '[[keys]]\nname = "root"\nkey = "sk-root"\nadmin = true\n'
    )
    settings = make_settings(api_keys_file=keys, models=[make_settings().models[0].model_dump()])
    with TestClient(create_app(settings)) as client:
        assert client.get("/", headers=BROWSER).status_code == 200  # the page asks itself
        assert client.get("/status").status_code == 401
        alice = {"authorization": "Bearer sk-alice"}
        client.post(
            "/v1/completions",
            headers=alice,
            json={"model": "smollm2", "prompt": "Hi", "max_tokens": 3},
        )
        assert client.get("/status", headers=alice).json()["keys"] is None
        usage = client.get("/status", headers={"authorization": "Bearer sk-root"}).json()["keys"]
        by_name = {k["name"]: k for k in usage}
        assert set(by_name) == {"alice", "root"}
        assert by_name["alice"]["requests"] == 1  # the completion; status reads are free
        assert by_name["alice"]["tokens"] > 0 and by_name["alice"]["running"] == 0


def test_polling_status_does_not_use_up_a_keys_requests_per_minute(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "slow"\nkey = "sk-slow"\nrequests_per_minute = 1\n')
    settings = make_settings(api_keys_file=keys, models=[make_settings().models[0].model_dump()])
    with TestClient(create_app(settings)) as client:
        slow = {"authorization": "Bearer sk-slow"}
        for _ in range(5):
            assert client.get("/status", headers=slow).status_code == 200
        assert client.get("/v1/models", headers=slow).status_code == 200  # its one request
        assert client.get("/v1/models", headers=slow).status_code == 429
