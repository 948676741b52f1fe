"""Decode speed after long contexts, by KV cache layout (engine only).

For each layout (flash attention and the key/value cache types) it loads the model with eight
slots, reads a ``ctx``-token prompt into the first slot (in 512-token pieces, as the engine
reads prompts) and copies it to the others, then times ``--tokens`` greedy decode steps of one
stream and of eight streams. Each figure is the median of ``--rounds`` rounds, the layouts
taking turns within each round. It prints tokens per second (all streams together) and each
context's speed over the shortest one's; with ``--write`` it appends the table to
bench/RESULTS.md. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flash_attn import TEXT, decode_rate

from bench import append_results
from server.engine.backend import BatchEntry
from server.engine.llama import LlamaBackend

# name: (flash_attn, cache_type_k, cache_type_v)
LAYOUTS = {
    "f16, FA off (default)": ("off", "f16", "f16"),
    "q8_0 keys, FA off": ("off", "q8_0", "f16"),
    "q8_0, FA on": ("on", "q8_0", "q8_0"),
}
STREAMS = (1, 8)


def fill(backend: LlamaBackend, prompt: list[int], streams: int) -> None:
    """Slots ``0..streams`` hold ``prompt``: read once, copied to the others."""
    backend.clear(0)
    for start in range(0, len(prompt), backend.n_batch):
        piece = prompt[start : start + backend.n_batch]
        backend.decode(
            [
                BatchEntry(0, token, start + i, start + i == len(prompt) - 1)
                for i, token in enumerate(piece)
            ]
        )
    for slot in range(1, streams):
        backend.copy_sequence(0, slot)


def measure(args: argparse.Namespace) -> dict[tuple[str, int, int], list[float]]:
    results: dict[tuple[str, int, int], list[float]] = {}
    backends = {
        name: LlamaBackend(
            args.model_path,
            n_ctx=max(args.contexts) + args.tokens + 16,
            n_slots=max(STREAMS),
            n_threads=args.threads,
            flash_attn=fa,
            cache_type_k=k,
            cache_type_v=v,
        )
        for name, (fa, k, v) in LAYOUTS.items()
    }
    try:
        any_backend = next(iter(backends.values()))
        tokens = any_backend.tokenize(TEXT * (max(args.contexts) // 20 + 1), add_special=False)
        for ctx in args.contexts:
            for backend in backends.values():
                fill(backend, tokens[:ctx], max(STREAMS))
            for _ in range(args.rounds):
                for streams in STREAMS:
                    for name, backend in backends.items():
                        rate = decode_rate(backend, ctx, streams, args.tokens)
                        results.setdefault((name, ctx, streams), []).append(rate)
            for streams in STREAMS:
                line = ", ".join(
                    f"{name}: {statistics.median(results[(name, ctx, streams)]):.1f}"
                    for name in LAYOUTS
                )
                print(f"ctx={ctx} streams={streams}: {line} tok/s", flush=True)
    finally:
        for backend in backends.values():
            backend.close()
    return results


def format_table(results: dict[tuple[str, int, int], list[float]], contexts: list[int]) -> str:
    shortest = min(contexts)
    lines = [
        "| context | streams | " + " | ".join(f"{name} tok/s (x short)" for name in LAYOUTS) + " |",
        "|---|---|" + "---|" * len(LAYOUTS),
    ]
    for ctx in contexts:
        for streams in STREAMS:
            cells = []
            for name in LAYOUTS:
                rate = statistics.median(results[(name, ctx, streams)])
                short = statistics.median(results[(name, shortest, streams)])
                cells.append(f"{rate:.1f} ({short / rate:.2f})")
            lines.append(f"| {ctx} | {streams} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--contexts", type=lambda v: [int(x) for x in v.split(",")], default=[100, 1000, 2000, 4000]
    )
    parser.add_argument("--write", type=Path, help="append the table to this RESULTS.md")
    args = parser.parse_args(argv)
    table = format_table(measure(args), args.contexts)
    print(table)
    if args.write is not None:
        append_results(
            args.write,
            "KV cache types: decode after long contexts (engine only)",
            args.threads,
            "bench/long_context.py",
            argv,
            table
            + "\n\nEach cell: tokens per second, all streams together (median of the rounds), "
            "and in brackets how many times slower than after the shortest context.",
            target="bench",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
