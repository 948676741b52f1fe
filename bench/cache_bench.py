"""`make bench` (second part): what KV-cache reuse buys, Hearth beside llama-server.

Both servers get 4 slots and the same chat requests, one server at a time:

- a ~1,500-token system prompt with one question (cold), then the same prompt with another
  question (warm): time to first token of each;
- 8 conversations of 3 turns, each with its own long system prompt, taking turns on 4 slots
  (more conversations than slots, so caches must survive eviction): the mean time to first
  token of turns 2 and 3.

llama-cpp-python's server keeps only the last prompt's cache and is measured too.
A benchmark, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (
    RunningServer,
    append_results,
    hearth_config,
    peer_servers,
    wait_ready,
)

WORDS = ["river", "stone", "lantern", "harvest", "meadow"]
WORDS += ["copper", "signal", "orchard", "glacier", "compass"]


def long_text(seed: int, sentences: int) -> str:
    """Deterministic filler prose, distinct per seed (about 22 SmolLM2 tokens a sentence)."""
    out = []
    for i in range(sentences):
        a, b, c = (WORDS[(seed * 7 + i * k) % len(WORDS)] for k in (1, 3, 7))
        out.append(f"Rule {seed}.{i}: the {a} keeps the {b} near the {c} at all times.")
    return "You follow these house rules. " + " ".join(out)


async def chat_ttft(
    client: httpx.AsyncClient, base_url: str, model: str, messages: list[dict[str, str]]
) -> tuple[float, str, int]:
    """Time to the first content token, the reply, and the prompt tokens (when reported)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    prompt_tokens = 0
    async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    first = first or time.perf_counter()
                    parts.append(content)
    ttft = (first or time.perf_counter()) - start
    return ttft, "".join(parts), prompt_tokens


async def scenario(
    base_url: str, model: str, prefix_sentences: int, conversations: int, seed: int = 0
) -> dict[str, float]:
    """Cold and warm time to first token of one long system prompt, then ``conversations``
    conversations of three turns taking turns; ``seed`` makes every prompt new (a later round
    of a benchmark must not find the last round's prompts cached)."""
    # A new connection per request: llama-server closes idle keep-alive connections, and a
    # stale one would fail the next request.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        system = {"role": "system", "content": long_text(1000 + seed, prefix_sentences)}
        cold, _, prompt_tokens = await chat_ttft(
            client,
            base_url,
            model,
            [system, {"role": "user", "content": "Which rule mentions a lantern?"}],
        )
        warm, _, _ = await chat_ttft(
            client, base_url, model, [system, {"role": "user", "content": "Summarize rule 3."}]
        )
        histories = [
            [{"role": "system", "content": long_text(seed + c, prefix_sentences)}]
            for c in range(conversations)
        ]
        later_turns: list[float] = []
        for turn in range(3):
            for history in histories:
                history.append(
                    {"role": "user", "content": f"Question {turn + 1}: which rule matters most?"}
                )
                ttft, reply, _ = await chat_ttft(client, base_url, model, history)
                history.append({"role": "assistant", "content": reply})
                if turn > 0:
                    later_turns.append(ttft)
    return {
        "prompt_tokens": float(prompt_tokens),
        "cold": cold,
        "warm": warm,
        "interleaved": statistics.mean(later_turns),
    }


def format_table(results: dict[str, dict[str, float]]) -> str:
    names = list(results)
    if not names:
        return "every server failed; see the logs in $TMPDIR/hearth-bench-logs"
    peers = names[1:]
    header = ["metric", *names, *[f"hearth / {p}" for p in peers]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label: str, key: str, fmt: str = "{:.2f}") -> None:
        values = [results[n].get(key, float("nan")) for n in names]
        ratios = [f"{values[0] / v:.2f}x" if v else "n/a" for v in values[1:]]
        lines.append("| " + " | ".join([label, *(fmt.format(v) for v in values), *ratios]) + " |")

    row("TTFT cold, long shared prefix (s)", "cold")
    row("TTFT warm, same prefix (s)", "warm")
    row("warm / cold", "warm_ratio", "{:.3f}")
    row("interleaved: mean TTFT of turns 2-3 (s)", "interleaved")
    row("interleaved / cold", "interleaved_ratio", "{:.3f}")
    tokens = int(results[names[0]].get("prompt_tokens", 0))
    lines.append(f"\nThe shared prefix is {tokens} prompt tokens as Hearth counts them.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--llama-server", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--prefix-sentences", type=int, default=68, help="about 1,500 tokens")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    args.slots, args.ctx = 4, 2048
    model = "bench"
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "hearth-bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    config = hearth_config(log_dir / "hearth-cache-bench.toml", args, model)
    only = os.environ.get("BENCH_ONLY")
    results: dict[str, dict[str, float]] = {}
    for spec in peer_servers(args, model, config):
        if only and spec.name not in only.split(","):
            continue
        print(f"cache scenario: {spec.name}", file=sys.stderr, flush=True)
        server = RunningServer(spec, log_dir)
        try:
            wait_ready(server.base_url, server.process)
            figures = asyncio.run(
                scenario(server.base_url, model, args.prefix_sentences, args.conversations)
            )
            figures["warm_ratio"] = figures["warm"] / figures["cold"]
            figures["interleaved_ratio"] = figures["interleaved"] / figures["cold"]
            results[spec.name] = figures
        except Exception as exc:  # a peer that fails is reported, not fatal
            print(f"{spec.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            server.stop()
    table = format_table(results)
    print(table)
    if args.write:
        title = f"KV reuse, {args.model_path.name}, 4 slots"
        append_results(args.write, title, args.threads, "bench/cache_bench.py", argv, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
