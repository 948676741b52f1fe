"""Prompt-lookup speculation: decode speed of copying and of free writing after the same long
prompt, with speculation on and off, at one and at four streams.

Starts one `hearth serve` with the model registered three times: ``fa-off`` (Hearth's CPU
default: flash attention off, so no speculation), ``fa-on`` (flash attention on, speculation
off) and ``spec`` (flash attention on, speculation on; exact there, see docs/development.md).
Each round sends every workload to every model in turn (alternating, so that drift in the
machine's speed hits all alike) and times the decode: completion tokens over the time from
the first streamed token to the last. Prints the median of the rounds, with the guesses kept,
and with ``--write`` appends the table to bench/RESULTS.md. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import append_results

# Hearth's CPU default (f16 cache, flash attention off), q8_0 keys, and the layout where
# batches are exact (flash attention, q8_0 keys and values) without and with speculation.
MODELS: dict[str, dict[str, Any]] = {
    "f16": {"flash_attn": "off", "k": "f16", "v": "f16", "enabled": False},
    "q8k": {"flash_attn": "off", "k": "q8_0", "v": "f16", "enabled": False},
    "exact": {"flash_attn": "on", "k": "q8_0", "v": "q8_0", "enabled": False},
    "spec": {"flash_attn": "on", "k": "q8_0", "v": "q8_0", "enabled": True},
}
SOURCE = "\n".join(
    f"def step_{i}(values):\n    total = sum(values) + {i}\n    return total * {i % 7 + 1}\n"
    for i in range(34)
)  # about 100 lines


def workloads() -> dict[str, str]:
    return {
        "copy": f"Repeat this code exactly, with no changes:\n\n{SOURCE}",
        "free": f"Here is some code:\n\n{SOURCE}\n\nIgnore it and write a long story about a "
        "dragon who learns to sail.",
    }


def config(model_path: Path, threads: int) -> str:
    lines: list[str] = []
    for name, options in MODELS.items():
        lines += [
            "[[models]]",
            f'name = "{name}"',
            f'path = "{model_path}"',
            "n_ctx = 4096",
            "slots = 4",
            f"threads = {threads}",
            "preload = true",
            f'flash_attn = "{options["flash_attn"]}"',
            f'cache_type_k = "{options["k"]}"',
            f'cache_type_v = "{options["v"]}"',
            "[models.speculative]",
            f"enabled = {'true' if options['enabled'] else 'false'}",
            "",
        ]
    return "\n".join(lines)


async def decode_rate(client: httpx.AsyncClient, model: str, prompt: str, tokens: int) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first: float | None = None
    count = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    assert first is not None
    return (count - 1) / (time.perf_counter() - first)


async def measure(
    base: str, streams: int, tokens: int, rounds: int
) -> dict[tuple[str, str], list[float]]:
    results: dict[tuple[str, str], list[float]] = {}
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        for prompt in workloads().values():  # the prompt in every model's cache first
            for model in MODELS:
                await decode_rate(client, model, prompt, 2)
        for _ in range(rounds):
            for name, prompt in workloads().items():
                for model in MODELS:
                    rates = await asyncio.gather(
                        *(decode_rate(client, model, prompt, tokens) for _ in range(streams))
                    )
                    results.setdefault((name, model), []).append(sum(rates))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8093)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "models.toml"
        config_path.write_text(config(args.model_path.resolve(), args.threads))
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--config",
                str(config_path),
                "--port",
                str(args.port),
                "--log-level",
                "warning",
                "--responses-db",
                str(Path(tmp) / "r.sqlite3"),
            ],
        )
        base = f"http://127.0.0.1:{args.port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(base + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            rows = [
                "| workload | streams | "
                + " | ".join(f"{m} tok/s" for m in MODELS)
                + " | spec / exact | spec / q8k | spec / f16 |",
                "|---|---|" + "---|" * (len(MODELS) + 3),
            ]
            for streams in (1, 4):
                results = asyncio.run(measure(base, streams, args.tokens, args.rounds))
                for name in workloads():
                    median = {m: statistics.median(results[(name, m)]) for m in MODELS}
                    rates = " | ".join(f"{median[m]:.1f}" for m in MODELS)
                    ratios = " | ".join(
                        f"{median['spec'] / median[m]:.2f}x" for m in ("exact", "q8k", "f16")
                    )
                    rows.append(f"| {name} | {streams} | {rates} | {ratios} |")
                    print(rows[-1], flush=True)
            metrics = httpx.get(base + "/metrics").text
            kept = [
                line
                for line in metrics.splitlines()
                if line.startswith("hearth_speculative_tokens_total")
            ]
        finally:
            server.terminate()
            server.wait(60)
    table = "\n".join(rows) + "\n\nGuesses (all rounds): " + "; ".join(kept) + "\n"
    print(table)
    if args.write is not None:
        title = (
            f"prompt-lookup speculation, {args.model_path.name}, {args.tokens} tokens per request"
        )
        append_results(
            args.write,
            title,
            args.threads,
            "bench/speculation.py",
            None,
            table,
            "bench-speculation",
        )


if __name__ == "__main__":
    main()
