"""With API keys on: no key can take more than its caps, jump ahead of another key, or unload
a model others use; remote models answer to the same caps."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.sse import sse_chunks
from tests.hostile.conftest import CHAT, ServerProcess, smollm2

NO_EOS = {"0": -100, "2": -100}
KEYS = """
[[keys]]
name = "alice"
key = "sk-alice"

[[keys]]
name = "bob"
key = "sk-bob"

[[keys]]
name = "carol"
key = "sk-carol"

[[keys]]
name = "capped"
key = "sk-capped"
max_tokens = 12

[[keys]]
name = "metered"
key = "sk-metered"
tokens_per_minute = 80

[[keys]]
name = "metered-far"
key = "sk-metered-far"
tokens_per_minute = 80

[[keys]]
name = "admin"
key = "sk-admin"
admin = true
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("keys")
    (tmp / "keys.toml").write_text(KEYS)
    far = {
        "name": "far",
        "upstream": "http://127.0.0.1:{port}/v1",
        "upstream_model": "smollm2",
        "upstream_api_key": "sk-alice",
    }
    process = ServerProcess(
        tmp,
        {"max_queue": 16, "api_keys_file": str(tmp / "keys.toml")},
        [smollm2(keep_alive=600), far],
    )
    process.headers = bearer("sk-alice")
    try:
        yield process.start()
    finally:
        process.stop()


def completion(key: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    body = {"model": "smollm2", "prompt": "1, 2, 3,", "temperature": 0, "logit_bias": NO_EOS}
    return key, {**body, **fields}


def post(
    server: ServerProcess, key: str, body: dict[str, Any], path: str = "/v1/completions"
) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        return http.post(path, json=body, headers=bearer(key))


def test_priority_orders_a_keys_own_requests_never_ahead_of_another_key(
    server: ServerProcess,
) -> None:
    finished: list[str] = []

    def run(name: str, key: str, body: dict[str, Any]) -> None:
        assert post(server, key, body).status_code == 200
        finished.append(name)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        # carol holds all four slots for a while.
        holder = pool.submit(run, "carol", *completion("sk-carol", n=4, max_tokens=150))
        deadline = time.monotonic() + 30
        while server.gauges()["hearth_slots_busy"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        urgent = [
            pool.submit(run, f"alice-{i}", *completion("sk-alice", max_tokens=40, priority=1000))
            for i in range(4)
        ]
        while server.gauges()["hearth_queue_depth"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        polite = pool.submit(run, "bob", *completion("sk-bob", max_tokens=40))
        for future in [holder, *urgent, polite]:
            future.result()
    # Four slots free at once: alice and bob take turns, so bob runs in the first wave, and
    # one of alice's requests waits for the second (all answers are the same length). With
    # priority across keys, alice's four went first and bob finished last.
    assert finished[0] == "carol"
    assert finished[-1].startswith("alice"), finished
    server.assert_recovered()


def test_a_keys_max_tokens_caps_the_whole_request(server: ServerProcess) -> None:
    answer = post(server, *completion("sk-capped", n=4, max_tokens=100)).json()
    assert answer["usage"]["completion_tokens"] <= 12
    assert all(c["finish_reason"] == "length" for c in answer["choices"])
    refused = post(server, *completion("sk-capped", n=16, max_tokens=100))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"
    server.assert_recovered()


def test_tokens_per_minute_stop_a_stream_while_it_runs(server: ServerProcess) -> None:
    response = post(server, *completion("sk-metered", max_tokens=400, stream=True))
    assert response.status_code == 200
    chunks = sse_chunks(response)
    # It ends where the key's tokens ran out, as at a max_tokens: what it made is served.
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert 5 < len(chunks) < 100  # stopped near 80 tokens, not after 400
    # The key is over its limit now: the next request is refused before it runs.
    assert post(server, *completion("sk-metered", max_tokens=5)).status_code == 429
    server.assert_recovered()


def test_remote_models_answer_to_the_same_caps(server: ServerProcess) -> None:
    capped = post(
        server,
        "sk-capped",
        {
            "model": "far",
            "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": 200,
            "n": 2,
        },
        CHAT,
    ).json()
    assert capped["usage"]["completion_tokens"] <= 12
    body = {
        "model": "far",
        "prompt": "1, 2, 3,",
        "max_tokens": 400,
        "temperature": 0,
        "logit_bias": NO_EOS,
        "stream": True,
    }
    streamed = post(server, "sk-metered-far", body)
    chunks = sse_chunks(streamed)
    # No usage was asked for and none is relayed, but the stream was counted as it ran.
    assert not any("usage" in c for c in chunks)
    assert chunks[-1]["error"]["code"] == "rate_limit_exceeded"
    server.assert_recovered()


def loaded(server: ServerProcess) -> bool:
    with server.client() as http:
        cards = http.get("/v1/models").json()["data"]
    return bool(next(c["loaded"] for c in cards if c["id"] == "smollm2"))


def test_only_an_admin_key_may_shorten_keep_alive(server: ServerProcess) -> None:
    hello = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert post(server, "sk-bob", {**hello, "keep_alive": 0}, CHAT).status_code == 200
    time.sleep(2)  # the reaper looks every half second
    assert loaded(server), "a plain key unloaded a shared model"
    assert post(server, "sk-admin", {**hello, "keep_alive": 0}, CHAT).status_code == 200
    deadline = time.monotonic() + 10
    while loaded(server):
        assert time.monotonic() < deadline, "an admin key could not unload the model"
        time.sleep(0.2)
    # The next request loads it again.
    server.assert_recovered()
    assert post(server, "sk-admin", {**hello, "keep_alive": 600}, CHAT).status_code == 200
    assert loaded(server)


def test_one_keys_cached_prompt_is_invisible_to_another_key(server: ServerProcess) -> None:
    secret = "The vault code is 4 8 2 1. " + "Never tell anyone the vault code. " * 12
    probe = {"model": "smollm2", "prompt": secret + "Question:", "max_tokens": 1}
    first = post(server, "sk-alice", probe).json()
    assert first["usage"]["prompt_tokens"] > 64
    # bob sends the same text: with caches per key, none of it was cached for him, so
    # cached_tokens cannot tell him how much of alice's prompt he guessed.
    guessed = post(server, "sk-bob", probe).json()
    assert guessed["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # alice's own next request reuses her prefix.
    again = post(server, "sk-alice", probe).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 64
    server.assert_recovered()


def test_a_keys_saved_prompts_stay_its_own_when_the_keys_change(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Keys given without names are named by their order (``key-1``, ``key-2``): after a
    restart with the keys in another order, each key's saved states follow the key itself,
    never the name it had."""
    kv = tmp_path_factory.mktemp("kv-of-keys")
    secret = "The vault code is 4 8 2 1. " + "Never tell anyone the vault code. " * 60
    probe = {"model": "smollm2", "prompt": secret + "Question:", "max_tokens": 1}

    def serve(keys: list[str]) -> ServerProcess:
        settings = {"api_keys": keys, "kv_cache_dir": kv, "kv_cache_disk_bytes": 1 << 30}
        process = ServerProcess(tmp_path_factory.mktemp("serve"), settings, [smollm2(slots=2)])
        process.headers = bearer("sk-A")
        return process.start()

    first = serve(["sk-A", "sk-B"])  # A is key-1
    try:
        asked = post(first, "sk-A", probe).json()
    finally:
        first.stop()  # saves the idle slot's state to the folder
    assert asked["usage"]["prompt_tokens"] > 300
    assert list(kv.rglob("*.state"))
    second = serve(["sk-B", "sk-A"])  # now B is key-1
    try:
        guessed = post(second, "sk-B", probe).json()
        assert guessed["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        # A's own state is still A's: restored from the folder.
        again = post(second, "sk-A", probe).json()
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 300
        second.assert_recovered()
    finally:
        second.stop()
