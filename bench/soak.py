"""`make soak`: a bounded soak and fault run of Hearth on loopback.

For ``--minutes`` it runs mixed clients against one Hearth server (SmolLM2, 4 slots, a small
queue): whole and streamed chat, completions with logprobs, forced tool calls, JSON-schema
output, embeddings, streams dropped mid-way, invalid requests, and bursts that overflow the
queue. Then it checks:

- no 5xx answer (clients' view, and the server's own request counter);
- no leaked slot or queued request once the clients stop;
- memory stable: the median RSS of the run's last fifth within 5% of the median RSS just after
  warm-up (the second fifth; the first is warm-up), sampled every 2 seconds;
- every accepted request completed (a finish_reason, or ``[DONE]``), or was dropped by its
  own client on purpose.

It prints a table, appends it to RESULTS.md with ``--write``, and exits non-zero if a check
fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import PeerServer, RunningServer, append_results, free_port, wait_ready

CLIENTS = 12
BURST = 32
MAX_RSS_GROWTH = 0.05
QUESTIONS = [
    "Name three colours.",
    "What is the capital of France?",
    "Write a haiku about tea.",
    "Explain rain in one sentence.",
    "List two animals that live in the sea.",
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
        },
    },
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 30}, "population": {"type": "integer"}},
    "required": ["name", "population"],
}


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    dropped_by_client: int = 0
    unfinished: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)

    def answer(self, kind: str, response: httpx.Response) -> None:
        self.kinds[kind] += 1
        self.statuses[response.status_code] += 1
        if response.status_code >= 500:
            self.server_errors.append(f"{kind}: {response.status_code} {response.text[:200]}")


def chat_body(rng: random.Random, **extra: Any) -> dict[str, Any]:
    return {
        "model": "smollm2",
        "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
        "max_tokens": rng.randint(8, 64),
        "temperature": rng.choice([0, 0.7]),
        **extra,
    }


async def whole(
    client: httpx.AsyncClient, tally: Tally, kind: str, url: str, body: dict[str, Any]
) -> None:
    response = await client.post(url, json=body)
    tally.answer(kind, response)
    if response.status_code == 200:
        data = response.json()
        finished = "data" in data or all(c.get("finish_reason") for c in data["choices"])
        if finished:
            tally.completed += 1
        else:
            tally.unfinished.append(f"{kind}: {json.dumps(data)[:200]}")


async def streamed(
    client: httpx.AsyncClient, tally: Tally, body: dict[str, Any], drop_after: int | None
) -> None:
    async with client.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}
    ) as response:
        tally.answer("stream" if drop_after is None else "stream-dropped", response)
        if response.status_code != 200:
            await response.aread()
            return
        events = 0
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                tally.completed += 1
                return
            if '"error"' in payload and payload.startswith('{"error"'):
                tally.server_errors.append(f"stream error event: {payload[:200]}")
            events += 1
            if drop_after is not None and events >= drop_after:
                tally.dropped_by_client += 1
                return  # leaving the block closes the connection mid-stream
        tally.unfinished.append("stream ended without [DONE]")


async def invalid(client: httpx.AsyncClient, tally: Tally, rng: random.Random) -> None:
    choice = rng.randrange(4)
    if choice == 0:
        response = await client.post("/v1/chat/completions", content=b'{"model": "smollm2", "mess')
    elif choice == 1:
        response = await client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    elif choice == 2:
        response = await client.post(
            "/v1/chat/completions", json={**chat_body(rng), "temperature": 9}
        )
    else:
        response = await client.post("/v1/embeddings", json={"model": "smollm2", "input": ""})
    tally.answer("invalid", response)
    if not 400 <= response.status_code < 500:
        tally.server_errors.append(f"invalid request answered {response.status_code}")


async def burst(client: httpx.AsyncClient, tally: Tally, rng: random.Random) -> None:
    """More requests at once than slots plus queue: the overflow must be 429s."""
    bodies = [chat_body(rng, max_tokens=16) for _ in range(BURST)]
    await asyncio.gather(
        *(whole(client, tally, "burst", "/v1/chat/completions", b) for b in bodies)
    )


async def client_loop(base_url: str, deadline: float, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        while time.monotonic() < deadline:
            action = rng.random()
            if action < 0.25:
                await whole(client, tally, "chat", "/v1/chat/completions", chat_body(rng))
            elif action < 0.45:
                await streamed(client, tally, chat_body(rng), drop_after=None)
            elif action < 0.55:
                await streamed(
                    client, tally, chat_body(rng, max_tokens=200), drop_after=rng.randint(1, 5)
                )
            elif action < 0.62:
                body = {
                    "model": "smollm2",
                    "prompt": rng.choice(QUESTIONS),
                    "max_tokens": 16,
                    "logprobs": 2,
                }
                await whole(client, tally, "completion-logprobs", "/v1/completions", body)
            elif action < 0.68:
                body = chat_body(
                    rng,
                    tools=[WEATHER_TOOL],
                    tool_choice="required",
                    parallel_tool_calls=False,
                    max_tokens=60,
                )
                await whole(client, tally, "tool-call", "/v1/chat/completions", body)
            elif action < 0.74:
                fmt = {
                    "type": "json_schema",
                    "json_schema": {"name": "city", "schema": CITY_SCHEMA},
                }
                await whole(
                    client,
                    tally,
                    "json-schema",
                    "/v1/chat/completions",
                    chat_body(rng, response_format=fmt, max_tokens=60),
                )
            elif action < 0.82:
                body = {"model": "smollm2", "input": [rng.choice(QUESTIONS) for _ in range(3)]}
                await whole(client, tally, "embeddings", "/v1/embeddings", body)
            elif action < 0.95:
                await invalid(client, tally, rng)
            elif seed == 0:  # one client bursts, so bursts do not pile up on each other
                await burst(client, tally, rng)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def sample_rss(pid: int, deadline: float, samples: list[tuple[float, float]]) -> None:
    start = time.monotonic()
    while time.monotonic() < deadline:
        samples.append((time.monotonic() - start, rss_mb(pid)))
        await asyncio.sleep(2)
    samples.append((time.monotonic() - start, rss_mb(pid)))


def window_median(samples: list[tuple[float, float]], start: float, end: float) -> float:
    values = sorted(rss for t, rss in samples if start <= t < end)
    return values[len(values) // 2] if values else float("nan")


def engine_gauges(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(
            ("hearth_slots_busy{", "hearth_queue_depth{", "hearth_model_requests_active{")
        ):
            name = line.split("{", 1)[0]
            values[name] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("hearth_requests_total{") and 'status="5' in line:
            values["server_5xx"] = values.get("server_5xx", 0) + float(line.rsplit(" ", 1)[1])
    return values


async def soak(base_url: str, pid: int, minutes: float) -> tuple[Tally, list[tuple[float, float]]]:
    tally = Tally()
    deadline = time.monotonic() + minutes * 60
    samples: list[tuple[float, float]] = []
    await asyncio.gather(
        sample_rss(pid, deadline, samples),
        *(client_loop(base_url, deadline, seed, tally) for seed in range(CLIENTS)),
    )
    return tally, samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path, default=None, help="append the table to this file")
    args = parser.parse_args(argv)

    port = free_port()
    work = Path(f"/tmp/hearth-soak-{port}")
    work.mkdir(parents=True, exist_ok=True)
    config = work / "models.toml"
    config.write_text(
        f'[[models]]\nname = "smollm2"\npath = "{args.model_path.resolve()}"\n'
        f"n_ctx = 1024\nslots = 4\nthreads = {args.threads}\nmax_queue = 16\npreload = true\n"
    )
    command = [
        sys.executable,
        "-m",
        "server",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--kv-cache-dir",
        str(work / "kv"),
        "--log-level",
        "warning",
    ]
    server = RunningServer(PeerServer("hearth-soak", command, port), work)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, server.process)
        started = time.monotonic()
        tally, samples = asyncio.run(soak(base_url, server.process.pid, args.minutes))
        elapsed = time.monotonic() - started
        time.sleep(1)  # cancelled sequences leave their slots at the next engine step
        gauges = engine_gauges(base_url)
    finally:
        server.stop()

    # RSS swings by ±15 MB from one sample to the next (transient buffers), so compare medians
    # of windows: the fifth of the run right after warm-up against the last fifth.
    warm_rss = window_median(samples, elapsed * 0.2, elapsed * 0.4)
    end_rss = window_median(samples, elapsed * 0.8, elapsed + 1)
    growth = (end_rss - warm_rss) / warm_rss
    accepted = tally.statuses[200]
    checks = {
        "no 5xx (clients)": not tally.server_errors,
        "no 5xx (server counter)": gauges.get("server_5xx", 0) == 0,
        "no leaked slots": gauges.get("hearth_slots_busy", -1) == 0,
        "empty queue": gauges.get("hearth_queue_depth", -1) == 0,
        "no request still holding the model": gauges.get("hearth_model_requests_active", -1) == 0,
        f"RSS growth < {MAX_RSS_GROWTH:.0%} after warm-up": growth < MAX_RSS_GROWTH,
        "every accepted request completed or was dropped by its client": (
            tally.completed + tally.dropped_by_client == accepted and not tally.unfinished
        ),
        "the queue overflowed (429s seen)": tally.statuses[429] > 0,
    }
    rows = [
        ("duration", f"{elapsed / 60:.1f} min, {CLIENTS} clients"),
        ("requests", str(sum(tally.statuses.values()))),
        ("by kind", ", ".join(f"{k} {v}" for k, v in sorted(tally.kinds.items()))),
        ("by status", ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items()))),
        (
            "accepted (200)",
            f"{accepted}: {tally.completed} completed, "
            f"{tally.dropped_by_client} dropped by their client",
        ),
        (
            "RSS (MB)",
            f"median after warm-up (20-40% of the run) {warm_rss:.0f}, median of the last "
            f"fifth {end_rss:.0f} ({growth:+.1%}), peak {max(r for _, r in samples):.0f}",
        ),
        (
            "slots busy / queued after",
            f"{gauges.get('hearth_slots_busy', float('nan')):.0f} / "
            f"{gauges.get('hearth_queue_depth', float('nan')):.0f}",
        ),
    ]
    minute_marks = []
    for minute in range(1, int(elapsed // 60) + 1):
        at = min(samples, key=lambda sample: abs(sample[0] - 60 * minute))
        minute_marks.append(f"{at[1]:.0f}")
    rows.append(("RSS each minute (MB)", " ".join(minute_marks)))
    rows += [(f"check: {name}", "pass" if ok else "FAIL") for name, ok in checks.items()]
    table = "| what | result |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    for line in tally.server_errors[:10] + tally.unfinished[:10]:
        print("  ", line)
    if args.write is not None:
        append_results(
            args.write,
            "soak and fault run, SmolLM2-135M, 4 slots, queue 16",
            args.threads,
            "bench/soak.py",
            argv,
            table,
            target="soak",
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
