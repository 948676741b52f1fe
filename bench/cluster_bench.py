"""Replicas behind the SGLang model gateway: cache-aware routing against round robin.

Starts ``--replicas`` Hearth processes and the router (server/cluster.py) once per policy and
round, the policies taking turns, and runs the same workload through each: ``--conversations``
conversations of three turns, each with its own long system prompt, ``--concurrency`` of them
at a time. It reports the share of prompt tokens read from the KV cache, the mean time to first
token of turns 2 and 3, and the aggregate completion tokens per second; with ``--write`` it
appends the table to bench/RESULTS.md. On one machine the replicas share its cores, so the
throughput does not scale with replicas; prefix reuse and time to first token show the
routing. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_bench import long_text

from bench import append_results
from server.cluster import Cluster
from tests.conftest import free_port

POLICIES = ("cache_aware", "round_robin")


async def turn(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], tokens: int
) -> tuple[float, str, dict[str, Any]]:
    """Time to first token, the reply and the usage of one streamed chat turn."""
    body = {
        "model": "smollm2",
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter()
                    parts.append(choice["delta"]["content"])
    return (first or time.perf_counter()) - start, "".join(parts), usage


async def workload(url: str, args: argparse.Namespace, seed: int) -> dict[str, float]:
    gate = asyncio.Semaphore(args.concurrency)
    prompt = cached = completion = 0
    later: list[float] = []

    async def conversation(c: int, client: httpx.AsyncClient) -> None:
        nonlocal prompt, cached, completion
        history = [{"role": "system", "content": long_text(seed * 100 + c, args.sentences)}]
        for t in range(3):
            history.append({"role": "user", "content": f"Question {t + 1}: which rule matters?"})
            async with gate:
                ttft, reply, usage = await turn(client, url, history, args.tokens)
            history.append({"role": "assistant", "content": reply})
            prompt += usage.get("prompt_tokens", 0)
            cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            completion += usage.get("completion_tokens", 0)
            if t > 0:
                later.append(ttft)

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(conversation(c, client) for c in range(args.conversations)))
    elapsed = time.perf_counter() - started
    return {
        "cached share": cached / prompt if prompt else 0.0,
        "mean TTFT, turns 2-3 (s)": statistics.mean(later),
        "aggregate tok/s": completion / elapsed,
    }


def measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {p: {} for p in POLICIES}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "models.toml"
        config.write_text(
            "[[models]]\n"
            'name = "smollm2"\n'
            f'path = "{args.model_path.resolve()}"\n'
            f"n_ctx = 2048\nslots = 4\nthreads = {args.threads}\npreload = true\n"
        )
        for round_ in range(args.rounds):
            for policy in POLICIES:
                group = Cluster(
                    replicas=args.replicas,
                    port=free_port(),
                    worker_ports=[free_port() for _ in range(args.replicas)],
                    policy=policy,
                    serve_args=["--config", str(config), "--responses-db", f"{tmp}/r.db"],
                    replica_env={"HEARTH_KV_CACHE_DISK_BYTES": "0", "HEARTH_LOG_LEVEL": "warning"},
                )
                with group:
                    figures = asyncio.run(workload(group.url, args, seed=round_))
                for name, value in figures.items():
                    results[policy].setdefault(name, []).append(value)
                print(policy, {k: round(v, 3) for k, v in figures.items()}, flush=True)
    return results


def format_table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| metric | cache_aware | round_robin | cache_aware / round_robin |",
        "|---|---|---|---|",
    ]
    for name in results["cache_aware"]:
        aware = statistics.median(results["cache_aware"][name])
        robin = statistics.median(results["round_robin"][name])
        ratio = f"{aware / robin:.2f}x" if robin else "n/a"
        lines.append(f"| {name} | {aware:.3g} | {robin:.3g} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per replica")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sentences", type=int, default=30, help="system prompt length")
    parser.add_argument("--tokens", type=int, default=24, help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", type=Path, help="append the table to this RESULTS.md")
    args = parser.parse_args(argv)
    table = format_table(measure(args))
    print(table)
    if args.write is not None:
        append_results(
            args.write,
            f"{args.replicas} replicas behind the SGLang model gateway: cache-aware routing "
            "against round robin",
            args.threads,
            "bench/cluster_bench.py",
            argv,
            table
            + f"\n\n{args.conversations} conversations of three turns, {args.concurrency} at a "
            f"time, each with its own system prompt of {args.sentences} sentences; medians of "
            f"{args.rounds} rounds, the policies taking turns.",
            target="bench-cluster",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
