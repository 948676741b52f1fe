"""`make bench`: Hearth beside llama-cpp-python's server and llama.cpp's llama-server.

Every server gets the same model, the same threads and the same requests, one server at a
time on this machine. The workload is /v1/completions at temperature 0 with prompts that make
the model count upwards (so no stream ends early on an end-of-text token), each request with
its own prompt (so no server gains from a prompt cache). Printed per server:

- single-stream decode tokens/s: (tokens - 1) / (last token time - first token time);
- aggregate completion tokens/s with 1, 4 and 8 concurrent streams: all tokens / wall time;
- p50 latency of a 1-token request (non-streamed, one at a time): the work around a step;
- interleaved conversations: twice as many three-turn chat conversations as slots, each with
  its own ~700-token system prompt, taking turns (so caches must survive eviction): the mean
  time to first token of turns 2 and 3;
- p50 and p95 time to first token under load (the 8-stream runs);
- peak RSS of the server process (VmHWM).

The servers take turns round by round (A, B, C, A, B, C, ...), so that a slow patch of a shared
machine hurts all alike. Each figure is the median of the rounds, with the lowest and highest
round beside it (the spread: a ratio inside the peers' spreads is noise), and the ratios are
Hearth's median over each peer's. This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 4, 8)
SINGLE_STREAM_REPEATS = 3
ONE_TOKEN_REPEATS = 9
# System prompt sentences of the interleaved conversations (~22 tokens each): with three
# turns, within a 1,024-token context.
INTERLEAVED_SENTENCES = 30


@dataclass
class StreamResult:
    start: float
    ttft: float
    token_times: list[float]

    @property
    def tokens(self) -> int:
        return len(self.token_times)


@dataclass
class ServerResult:
    name: str
    # Each figure's value in every round.
    rounds: dict[str, list[float]] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    error: str | None = None

    def median(self, figure: str) -> float:
        values = self.rounds.get(figure)
        return statistics.median(values) if values else float("nan")

    def spread(self, figure: str) -> tuple[float, float]:
        values = self.rounds.get(figure) or [float("nan")]
        return min(values), max(values)


@dataclass
class PeerServer:
    name: str
    command: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None  # `python -m server` imports from here first


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prompt_for(index: int) -> str:
    start = 10 + 37 * index
    return ", ".join(str(n) for n in range(start, start + 8)) + ","


async def _stream(
    client: httpx.AsyncClient, base_url: str, model: str, prompt: str, max_tokens: int
) -> StreamResult:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    times: list[float] = []
    async with client.stream("POST", f"{base_url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                times.append(time.perf_counter())
    ttft = (times[0] - start) if times else float("nan")
    return StreamResult(start, ttft, times)


async def _concurrent(
    base_url: str, model: str, prompts: list[str], max_tokens: int
) -> list[StreamResult]:
    # One event loop for every stream: threads would fight over the GIL and the client's own
    # CPU use would weigh on the server sharing these cores.
    limits = httpx.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        return list(
            await asyncio.gather(
                *(_stream(client, base_url, model, p, max_tokens) for p in prompts)
            )
        )


def stream_completion(base_url: str, model: str, prompt: str, max_tokens: int) -> StreamResult:
    return asyncio.run(_concurrent(base_url, model, [prompt], max_tokens))[0]


def run_concurrent(
    base_url: str, model: str, streams: int, max_tokens: int, offset: int
) -> list[StreamResult]:
    prompts = [prompt_for(offset + i) for i in range(streams)]
    return asyncio.run(_concurrent(base_url, model, prompts, max_tokens))


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def wait_ready(base_url: str, process: subprocess.Popen[bytes], limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        try:
            if httpx.get(f"{base_url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class RunningServer:
    """A peer started in the background, with its log in ``log_dir``."""

    def __init__(self, server: PeerServer, log_dir: Path) -> None:
        self.spec = server
        self.base_url = f"http://127.0.0.1:{server.port}"
        self._log = (log_dir / f"{server.name}.log").open("wb")
        self.process = subprocess.Popen(
            server.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **server.env},
            cwd=server.cwd,
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def measure_round(
    server: RunningServer, model: str, max_tokens: int, offset: int, slots: int
) -> dict[str, float | list[float]]:
    """One round of every measurement on one server."""
    # Three single streams per round: one 128-token request is short enough for a noisy
    # neighbour on a shared machine to move it by 10%.
    rates = []
    for i in range(SINGLE_STREAM_REPEATS):
        single = stream_completion(server.base_url, model, prompt_for(offset + i), max_tokens)
        span = single.token_times[-1] - single.token_times[0]
        rates.append((single.tokens - 1) / span if span > 0 else float("nan"))
    figures: dict[str, float | list[float]] = {"single": statistics.median(rates)}
    offset += SINGLE_STREAM_REPEATS
    latencies = []
    for i in range(ONE_TOKEN_REPEATS):
        started = time.perf_counter()
        body = {"model": model, "prompt": prompt_for(offset + i), "max_tokens": 1}
        httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60).raise_for_status()
        latencies.append(time.perf_counter() - started)
    figures["one_token_ms"] = 1000 * statistics.median(latencies)
    offset += ONE_TOKEN_REPEATS
    from cache_bench import scenario  # (cache_bench imports this module)

    conversations = asyncio.run(
        scenario(server.base_url, model, INTERLEAVED_SENTENCES, 2 * slots, seed=offset)
    )
    figures["interleaved"] = conversations["interleaved"]
    for streams in CONCURRENCY:
        runs = run_concurrent(server.base_url, model, streams, max_tokens, offset)
        offset += streams
        wall = max(r.token_times[-1] for r in runs if r.tokens) - min(r.start for r in runs)
        figures[f"agg{streams}"] = sum(r.tokens for r in runs) / wall
        if streams == max(CONCURRENCY):
            figures["ttfts"] = [r.ttft for r in runs]
    return figures


def measure_all(
    servers: list[PeerServer],
    model: str,
    max_tokens: int,
    rounds: int,
    log_dir: Path,
    slots: int = 8,
) -> list[ServerResult]:
    """Start every server, then take turns round by round, so that a slow patch of a shared
    machine hurts all of them alike; report the median of the rounds."""
    running = [RunningServer(s, log_dir) for s in servers]
    results = [ServerResult(s.name) for s in servers]
    rounds_by_server: list[list[dict[str, float | list[float]]]] = [[] for _ in servers]
    try:
        for server, result in zip(running, results, strict=True):
            try:
                wait_ready(server.base_url, server.process)
                stream_completion(server.base_url, model, prompt_for(999), 8)  # warm-up
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"
        for round_index in range(rounds):
            for i, (server, result) in enumerate(zip(running, results, strict=True)):
                if result.error:
                    continue
                print(
                    f"round {round_index + 1}/{rounds}: {server.spec.name}",
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    rounds_by_server[i].append(
                        measure_round(server, model, max_tokens, 1000 * round_index, slots)
                    )
                except Exception as exc:  # a peer that fails is reported, not fatal
                    result.error = f"{type(exc).__name__}: {exc}"
        for server, result, figures in zip(running, results, rounds_by_server, strict=True):
            result.peak_rss_mb = peak_rss_mb(server.process.pid)
            if result.error or not figures:
                continue
            figure_names = ("single", "one_token_ms", "interleaved")
            for name in (*figure_names, *(f"agg{n}" for n in CONCURRENCY)):
                result.rounds[name] = [number(f[name]) for f in figures]
            result.rounds["ttft_p50"] = [statistics.median(series(f["ttfts"])) for f in figures]
            result.rounds["ttft_p95"] = [percentile(series(f["ttfts"]), 0.95) for f in figures]
    finally:
        for server in running:
            server.stop()
    return results


def number(value: float | list[float]) -> float:
    """A figure that is one number."""
    assert isinstance(value, float | int)
    return float(value)


def series(value: float | list[float]) -> list[float]:
    """A figure that is a list of numbers."""
    assert isinstance(value, list)
    return value


def format_table(results: list[ServerResult]) -> str:
    peers = results[1:]
    header = ["metric", *[r.name for r in results], *[f"hearth / {p.name}" for p in peers]]
    rows: list[list[str]] = []

    def cell(result: ServerResult, figure: str, fmt: str) -> str:
        median = result.median(figure)
        if math.isnan(median):
            return "n/a"
        low, high = result.spread(figure)
        if low == high:
            return fmt.format(median)
        return f"{fmt.format(median)} ({fmt.format(low)} to {fmt.format(high)})"

    def row(label: str, figure: str, fmt: str = "{:.1f}") -> None:
        """Each server's median and spread, then Hearth's median over each peer's."""
        hearth = results[0].median(figure)
        ratios = []
        for peer in peers:
            value = peer.median(figure)
            usable = not (math.isnan(hearth) or math.isnan(value) or not value)
            ratios.append(f"{hearth / value:.2f}x" if usable else "n/a")
        rows.append([label, *[cell(r, figure, fmt) for r in results], *ratios])

    row("single-stream decode tok/s", "single")
    for streams in CONCURRENCY:
        row(f"aggregate tok/s, {streams} streams", f"agg{streams}")
    row("1-token request p50 (ms)", "one_token_ms")
    row("interleaved conversations: TTFT of turns 2-3 (s)", "interleaved", fmt="{:.3f}")
    row("TTFT p50 under load (s)", "ttft_p50", fmt="{:.2f}")
    row("TTFT p95 under load (s)", "ttft_p95", fmt="{:.2f}")
    rss = [f"{r.peak_rss_mb:.0f}" for r in results]
    rss_ratios = [
        f"{results[0].peak_rss_mb / p.peak_rss_mb:.2f}x" if p.peak_rss_mb else "n/a" for p in peers
    ]
    rows.append(["peak RSS (MB)", *rss, *rss_ratios])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append(
        "\nEach cell: the median of the rounds (lowest to highest round). Ratios: medians; above "
        "1 is better for Hearth except for latencies, TTFT and memory."
    )
    for r in results:
        if r.error:
            lines.append(f"\n{r.name} failed: {r.error}")
    return "\n".join(lines)


def machine_description(threads: int) -> str:
    cpu = "unknown CPU"
    vector: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not vector:
                # What llama.cpp picks its kernels by: the CPU's vector extensions.
                flags = line.split(":", 1)[1].split()
                vector = {f for f in flags if f.startswith(("avx", "amx", "f16c", "fma"))}
    except OSError:
        pass
    if vector:
        cpu += ", " + " ".join(sorted(vector))
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.machine()}"
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {system}; {threads} threads per server"
    )


def hearth_config(path: Path, args: argparse.Namespace, model: str) -> Path:
    """A one-model Hearth config with the benchmark's context, slots and threads."""
    path.write_text(
        f'[[models]]\nname = "{model}"\npath = "{args.model_path.resolve()}"\n'
        f"n_ctx = {args.ctx}\nslots = {args.slots}\nthreads = {args.threads}\n"
    )
    return path


def append_results(
    path: Path,
    title: str,
    threads: int,
    script: str,
    argv: list[str] | None,
    table: str,
    target: str = "bench",
) -> None:
    """Add a dated table to RESULTS.md, with the machine and the command that made it."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = f"make {target}  # " + " ".join([script, *(argv or sys.argv[1:])])
    with path.open("a") as fh:
        fh.write(
            f"\n## {stamp}: {title}\n\n"
            f"Machine: {machine_description(threads)}.  \n"
            f"Command: `{command}`\n\n{table}\n"
        )


def peer_servers(args: argparse.Namespace, model: str, config: Path) -> list[PeerServer]:
    """The three servers, each on a free port, with the same model, context and threads."""
    python = sys.executable
    serve = [python, "-m", "server", "serve", "--config", str(config), "--log-level", "warning"]
    servers = [
        PeerServer(
            "hearth",
            serve,
            port := free_port(),
            {
                "HEARTH_PORT": str(port),
                # Saved KV states stay in RAM: nothing from a benchmark lingers on disk.
                "HEARTH_KV_CACHE_DISK_BYTES": "0",
            },
        ),
        PeerServer(
            "llama-cpp-python",
            [
                python,
                "-m",
                "llama_cpp.server",
                "--model",
                str(args.model_path),
                "--model_alias",
                model,
                "--n_ctx",
                str(args.ctx),
                "--n_threads",
                str(args.threads),
                "--n_threads_batch",
                str(args.threads),
                "--port",
                str(p2 := free_port()),
                # Its default cuts off a running stream when the next request arrives; let every
                # request finish so that the tokens counted are tokens delivered.
                "--interrupt_requests",
                "False",
            ],
            p2,
        ),
    ]
    if args.baseline is not None:
        # Hearth as another checkout has it (e.g. `git worktree add DIR COMMIT`), in this
        # environment: before and after a change, measured in the same alternating rounds.
        servers.insert(
            1,
            PeerServer(
                "hearth-baseline",
                serve,
                port := free_port(),
                {
                    "HEARTH_PORT": str(port),
                    "HEARTH_KV_CACHE_DISK_BYTES": "0",
                    "PYTHONPATH": str(args.baseline.resolve()),
                },
                cwd=args.baseline.resolve(),
            ),
        )
    if args.llama_server and args.llama_server.exists():
        servers.append(
            PeerServer(
                "llama-server",
                [
                    str(args.llama_server),
                    "-m",
                    str(args.model_path),
                    "--alias",
                    model,
                    "-c",
                    str(args.ctx * args.slots),
                    "-np",
                    str(args.slots),
                    "-t",
                    str(args.threads),
                    "-tb",
                    str(args.threads),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(p3 := free_port()),
                ],
                p3,
            )
        )
    return servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-path", type=Path, required=True, help="GGUF file every server loads"
    )
    parser.add_argument("--llama-server", type=Path, help="llama-server binary (skipped if absent)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds per server; medians are reported"
    )
    parser.add_argument("--write", type=Path, help="append the table to this markdown file")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of Hearth to measure beside this one (column hearth-baseline)",
    )
    args = parser.parse_args(argv)

    model = "bench"
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "hearth-bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    config = hearth_config(log_dir / "hearth-bench.toml", args, model)
    servers = peer_servers(args, model, config)
    only = os.environ.get("BENCH_ONLY")
    if only:
        servers = [s for s in servers if s.name in only.split(",")]
    results = measure_all(servers, model, args.max_tokens, args.rounds, log_dir, args.slots)
    table = format_table(results)
    print(table)
    if args.write:
        title = f"{args.model_path.name}, {args.slots} slots, {args.max_tokens} tokens per request"
        append_results(args.write, title, args.threads, "bench/bench.py", argv, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
