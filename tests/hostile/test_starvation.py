"""No client can stall the others: abandoned embeddings, huge grammars and greedy requests
leave the server answering everyone else."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time

import httpx

from tests.hostile.conftest import CHAT, HELLO, ServerProcess


def _abandoned_embedding(base_url: str) -> None:
    big = {"model": "smollm2", "input": ["word " * 900] * 200}
    # The client gives up after three seconds and closes the connection.
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(base_url + "/v1/embeddings", json=big, timeout=3.0)


def test_abandoned_embeddings_do_not_starve_chat(server: ServerProcess) -> None:
    # Each request is 180,000 tokens to embed, minutes of work for all eight. They used to
    # run on regardless, holding the default thread pool that chat tokenized in: a one-token
    # chat behind them took 169 s. The chat's client waits at most 60 s.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(_abandoned_embedding, [server.base_url] * 8))
    with server.client(timeout=60) as http:
        answer = http.post(CHAT, json=HELLO)
    assert answer.status_code == 200, answer.text
    server.assert_recovered()


# SmolLM2's end-of-generation tokens, banned so that every answer runs to max_tokens.
NO_EOS = {"0": -100, "2": -100}


def test_one_requests_choices_do_not_hold_every_slot_while_another_waits(
    server: ServerProcess,
) -> None:
    # Eight choices on four slots: four run, four wait. Another client's small request used
    # to wait behind all of them (the same anonymous owner, so one FIFO line): now each
    # request is an owner of its own, and the owner holding fewest slots goes next.
    greedy = {
        "model": "smollm2",
        "prompt": "1, 2, 3,",
        "n": 8,
        "max_tokens": 120,
        "temperature": 0,
        "logit_bias": NO_EOS,
    }
    small = {"model": "smollm2", "prompt": "Hello", "max_tokens": 4, "logit_bias": NO_EOS}
    with concurrent.futures.ThreadPoolExecutor(2) as pool, server.client() as http:
        big = pool.submit(http.post, "/v1/completions", json=greedy)
        deadline = time.monotonic() + 30
        while server.gauges()["hearth_slots_busy"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answer = http.post("/v1/completions", json=small)
        assert answer.status_code == 200
        # The small request finished while the greedy one still had choices to run.
        assert not big.done()
        assert big.result().status_code == 200
    server.assert_recovered()


def test_one_request_cannot_fill_the_queue_for_everyone(server: ServerProcess) -> None:
    # max_queue is 16 jobs, an owner's share 8: a request of 64 prompts is refused outright,
    # and one that fills its owner's share leaves room for others.
    many = {"model": "smollm2", "prompt": ["Hi"] * 64, "n": 2, "max_tokens": 1}
    with server.client() as http:
        refused = http.post("/v1/completions", json=many)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "too_many_choices"
        long = {**many, "prompt": "1, 2, 3,", "n": 4, "max_tokens": 150, "logit_bias": NO_EOS}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            running = pool.submit(http.post, "/v1/completions", json=long)
            deadline = time.monotonic() + 30
            while server.gauges()["hearth_slots_busy"] < 4:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            share = {**many, "prompt": ["Hi"] * 8, "n": 1}
            filling = pool.submit(http.post, "/v1/completions", json=share)
            while server.gauges()["hearth_queue_depth"] < 8:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            other = http.post("/v1/completions", json={**share, "prompt": "Hi"})
            assert other.status_code == 200, other.text
            assert filling.result().status_code == 200
            assert running.result().status_code == 200
    server.assert_recovered()
