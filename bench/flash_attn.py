"""Decode speed with llama.cpp's flash attention `auto`, `on` and `off`, by context length and
streams, on a quiet machine and beside a competing busy process.

For each mode it loads the model with four slots, fills each slot with ``ctx`` prompt tokens
(timing the first slot's prefill, in 512-token chunks as the engine reads prompts), then times
``--tokens`` greedy decode steps of one stream and of four streams, first alone, then with
``--competitors`` busy-looping processes running. It prints tokens per second (all streams
together) and, with ``--write``, appends the table to bench/RESULTS.md. A benchmark, not a
test.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import append_results
from server.engine.backend import BatchEntry
from server.engine.llama import LlamaBackend
from server.engine.types import SamplingParams

TEXT = (
    "The river town kept its ledgers in a stone house by the bridge, and every spring the "
    "clerks copied the old accounts into new books, line by line, so that nothing was lost. "
)
MODES = ("auto", "on", "off")


@contextlib.contextmanager
def competing(processes: int) -> Iterator[None]:
    """``processes`` busy loops for the duration (the machine is otherwise in use)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


def fill(backend: LlamaBackend, prompt: list[int], slots: int) -> float:
    """Each slot holds ``prompt`` (one slot's prompt per decode, in prefill_chunk pieces);
    returns the first slot's prefill speed in tokens per second."""
    rate = 0.0
    for slot in range(slots):
        started = time.perf_counter()
        backend.clear(slot)
        for start in range(0, len(prompt), backend.n_batch):
            piece = prompt[start : start + backend.n_batch]
            backend.decode(
                [
                    BatchEntry(slot, token, start + i, start + i == len(prompt) - 1)
                    for i, token in enumerate(piece)
                ]
            )
        if slot == 0:
            rate = len(prompt) / (time.perf_counter() - started)
    return rate


def decode_rate(backend: LlamaBackend, ctx: int, streams: int, tokens: int) -> float:
    """Tokens per second of ``streams`` sequences decoding together after ``ctx`` tokens."""
    for slot in range(streams):
        backend.begin(slot, SamplingParams(temperature=0))
    last = [0] * streams
    started = time.perf_counter()
    for step in range(tokens):
        entries = [BatchEntry(s, last[s], ctx + step, True) for s in range(streams)]
        backend.decode(entries)
        last = [backend.sample(s, s) for s in range(streams)]
    elapsed = time.perf_counter() - started
    for slot in range(streams):
        backend.end(slot)
        backend.truncate(slot, ctx)
    return streams * tokens / elapsed


def measure(args: argparse.Namespace) -> dict[tuple[str, int, int, str], float]:
    results: dict[tuple[str, int, int, str], float] = {}
    longest = max(args.contexts)
    for mode in MODES:
        backend = LlamaBackend(
            args.model_path,
            n_ctx=longest + args.tokens + 16,
            n_slots=4,
            n_threads=args.threads,
            flash_attn=mode,
        )
        text_tokens = backend.tokenize(TEXT * (longest // 20 + 1), add_special=False)
        for ctx in args.contexts:
            results[(mode, ctx, 0, "prefill")] = fill(backend, text_tokens[:ctx], 4)
            for streams in (1, 4):
                results[(mode, ctx, streams, "quiet")] = decode_rate(
                    backend, ctx, streams, args.tokens
                )
                with competing(args.competitors):
                    results[(mode, ctx, streams, "busy")] = decode_rate(
                        backend, ctx, streams, args.tokens
                    )
                print(
                    f"{mode:4s} ctx={ctx:5d} streams={streams} "
                    f"quiet={results[(mode, ctx, streams, 'quiet')]:.1f} "
                    f"busy={results[(mode, ctx, streams, 'busy')]:.1f} tok/s",
                    flush=True,
                )
        backend.close()
    return results


def format_table(results: dict[tuple[str, int, int, str], float], contexts: list[int]) -> str:
    lines = [
        "| context | streams | machine | " + " | ".join(f"`{m}` tok/s" for m in MODES) + " |",
        "|---|---|---|" + "---|" * len(MODES),
    ]
    for ctx in contexts:
        rates = " | ".join(f"{results[(m, ctx, 0, 'prefill')]:.0f}" for m in MODES)
        lines.append(f"| {ctx} | prefill | quiet | {rates} |")
        for streams in (1, 4):
            for condition in ("quiet", "busy"):
                rates = " | ".join(f"{results[(m, ctx, streams, condition)]:.1f}" for m in MODES)
                lines.append(f"| {ctx} | {streams} | {condition} | {rates} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument(
        "--contexts", type=lambda v: [int(x) for x in v.split(",")], default=[100, 1000, 2000, 4000]
    )
    parser.add_argument("--competitors", type=int, default=1)
    parser.add_argument("--write", type=Path, help="append the table to this RESULTS.md")
    args = parser.parse_args(argv)
    table = format_table(measure(args), args.contexts)
    print(table)
    if args.write is not None:
        append_results(
            args.write,
            "flash attention by context, streams and contention (engine only)",
            args.threads,
            "bench/flash_attn.py",
            argv,
            table + f"\n\nBusy: {args.competitors} process(es) spinning beside the engine.",
            target="bench",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
