"""A conversation that moves replica: the second turn on the other replica, with the KV state
folder shared, against the same turn sent there cold.

Starts two Hearth processes (server/cluster.py, no router: this measures the state tier, not
routing) on one ``kv_cache_dir``. Each round, a conversation with its own long system prompt
has its first turn on replica A; once replica B has found the state A saved (its
``hearth_kv_state_shared_total{event="found"}`` goes up), the second turn goes to B, streamed,
and its time to first token is taken. For comparison, in the same round: the second turn of a
conversation of the same shape B never saw anywhere (cold, prefilled in full), and the same
second turn sent to A, whose slot still holds the first (the best case: no restore at all).
With ``--write`` it appends the table to bench/RESULTS.md. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_bench import long_text
from cluster_bench import turn

from bench import append_results
from server.cluster import Cluster
from tests.conftest import free_port

CASES = ("cold on B", "moved to B (shared folder)", "stayed on A (its own slot)")


def found(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "hearth_kv_state_shared_total" and s.labels.get("event") == "found"
    )


async def one_round(
    a: str, b: str, args: argparse.Namespace, r: int
) -> dict[str, tuple[float, float]]:
    figures: dict[str, tuple[float, float]] = {}
    async with httpx.AsyncClient(timeout=600) as client:

        def conversation(seed: int) -> list[dict[str, str]]:
            return [
                {"role": "system", "content": long_text(seed, args.sentences)},
                {"role": "user", "content": "Question 1: which rule matters most?"},
            ]

        moving = conversation(1000 + r)
        before = found(b)
        _, answer, _ = await turn(client, a, moving, args.tokens)
        deadline = time.monotonic() + 120
        while found(b) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("replica B never found the state replica A saved")
            await asyncio.sleep(0.1)
        second = [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Question 2: and which one after it?"},
        ]
        cold = conversation(5000 + r) + second
        for case, url, messages in (
            (CASES[0], b, cold),
            (CASES[1], b, moving + second),
            (CASES[2], a, moving + second),
        ):
            ttft, _, usage = await turn(client, url, messages, args.tokens)
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            figures[case] = (ttft, cached / max(1, usage.get("prompt_tokens", 1)))
    return figures


def measure(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "models.toml"
        config.write_text(
            "[[models]]\n"
            'name = "smollm2"\n'
            f'path = "{args.model_path.resolve()}"\n'
            f"n_ctx = 2048\nslots = 2\nthreads = {args.threads}\npreload = true\n"
        )
        group = Cluster(
            replicas=2,
            worker_ports=[free_port(), free_port()],
            router=False,
            serve_args=["--config", str(config), "--responses-db", f"{tmp}/r.db"],
            replica_env={
                "HEARTH_KV_CACHE_DIR": f"{tmp}/kv",
                "HEARTH_KV_CACHE_SCAN_INTERVAL": "0.2",
                "HEARTH_LOG_LEVEL": "warning",
            },
        )
        with group:
            a, b = group.worker_urls
            for r in range(args.rounds):
                figures = asyncio.run(one_round(a, b, args, r))
                for case, value in figures.items():
                    results[case].append(value)
                print(r, {k: (round(t, 3), round(c, 2)) for k, (t, c) in figures.items()})
    return results


def format_table(results: dict[str, list[tuple[float, float]]]) -> str:
    cold = statistics.median(t for t, _ in results[CASES[0]])
    lines = [
        "| second turn | TTFT median (s) | lowest-highest | cached share | vs cold |",
        "|---|---|---|---|---|",
    ]
    for case, runs in results.items():
        times = [t for t, _ in runs]
        median = statistics.median(times)
        share = statistics.median(c for _, c in runs)
        lines.append(
            f"| {case} | {median:.3f} | {min(times):.3f}-{max(times):.3f} | {share:.2f} | "
            f"{median / cold:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per replica")
    parser.add_argument("--sentences", type=int, default=60, help="system prompt length")
    parser.add_argument("--tokens", type=int, default=24, help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", type=Path, help="append the table to this RESULTS.md")
    args = parser.parse_args(argv)
    table = format_table(measure(args))
    print(table)
    if args.write is not None:
        append_results(
            args.write,
            "a conversation moving replica: second turn with the KV state folder shared, "
            "against cold",
            args.threads,
            "bench/shared_kv.py",
            argv,
            table + f"\n\nTwo replicas on one `kv_cache_dir`, system prompts of {args.sentences} "
            f"sentences, {args.tokens}-token answers; medians of {args.rounds} rounds.",
            target="bench-cluster",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
