"""``hearth cluster``: several Hearth replicas on one machine behind an existing router.

Hearth does not balance load itself. This starts ``replicas`` ordinary ``hearth serve``
processes on loopback ports and the SGLang model gateway (``sglang-router`` on PyPI, a Rust
router for any OpenAI-compatible worker) in front of them, with its ``cache_aware`` policy by
default: it keeps a prefix tree of the requests each worker has seen and sends a request to the
worker that holds the longest match, so a conversation's later turns find their prefix in that
replica's KV cache. It is a supervisor of processes (start, wait until ready, stop), used by
``make cluster``, the cluster benchmark and the tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

ROUTER_POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")


class ClusterError(RuntimeError):
    """A replica or the router did not start."""


@dataclass
class Cluster:
    """``replicas`` Hearth servers on ``port + 1 ...`` and the router on ``port``.

    ``serve_args`` are passed to every ``hearth serve`` (``--config``, ``--threads`` ...);
    ``replica_env`` adds environment variables to the replicas (``HEARTH_*`` settings)."""

    replicas: int = 2
    port: int = 8000
    policy: str = "cache_aware"
    serve_args: Sequence[str] = ()
    replica_env: dict[str, str] = field(default_factory=dict)
    # The replicas' ports, when not port + 1, port + 2, ...
    worker_ports: Sequence[int] = ()
    # Options for the router (`python -m sglang_router.launch_router --help`). By default its
    # cache-aware policy only balances load once replicas differ by 64 requests in flight; a
    # Hearth replica runs a few sequences at once (its slots), so balance at any difference.
    router_args: Sequence[str] = ("--balance-abs-threshold", "1", "--balance-rel-threshold", "1.0")
    host: str = "127.0.0.1"
    startup_timeout: float = 300.0
    log_dir: Path | None = None
    # False: the replicas alone, for a router started elsewhere (or none, in tests).
    router: bool = True
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    _names: list[str] = field(default_factory=list, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def worker_urls(self) -> list[str]:
        ports = self.worker_ports or [self.port + 1 + i for i in range(self.replicas)]
        return [f"http://{self.host}:{port}" for port in ports]

    def start(self) -> Cluster:
        if self.policy not in ROUTER_POLICIES:
            raise ClusterError(f"unknown router policy {self.policy!r}: one of {ROUTER_POLICIES}")
        if self.router and importlib.util.find_spec("sglang_router") is None:
            raise ClusterError(
                "the router is not installed: pip install 'hearth[cluster]' (sglang-router)"
            )
        try:
            for i, url in enumerate(self.worker_urls):
                port = url.rsplit(":", 1)[1]
                command = [sys.executable, "-m", "server.cli", "serve", *self.serve_args]
                self._spawn(
                    f"replica-{i}",
                    [*command, "--host", self.host, "--port", port],
                    env={**os.environ, **self.replica_env},
                )
            for url in self.worker_urls:
                self._wait(url + "/ready")
            if not self.router:
                return self
            self._spawn(
                "router",
                [
                    sys.executable,
                    "-m",
                    "sglang_router.launch_router",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--policy",
                    self.policy,
                    "--worker-urls",
                    *self.worker_urls,
                    "--log-level",
                    "warn",
                    # Hearth has its own queue and limits; the router only picks a replica.
                    "--disable-retries",
                    *self.router_args,
                ],
                env=dict(os.environ),
            )
            self._wait(self.url + "/health")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = (self.log_dir / f"{name}.log").open("wb")
        try:
            output = log if log is not None else subprocess.DEVNULL
            process = subprocess.Popen(command, env=env, stdout=output, stderr=output)
        finally:
            if log is not None:
                log.close()  # the child has its own descriptor
        self._processes.append(process)
        self._names.append(name)

    def _wait(self, url: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for name, process in zip(self._names, self._processes, strict=True):
                if process.poll() is not None:
                    raise ClusterError(f"{name} exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise ClusterError(f"{url} did not answer within {self.startup_timeout:.0f}s")

    def stop(self) -> None:
        """SIGTERM to everything (replicas drain their running requests), then SIGKILL."""
        for process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self._processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        self._names.clear()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def wait(self) -> None:
        """Until a process ends (or Ctrl-C)."""
        while all(process.poll() is None for process in self._processes):
            time.sleep(0.5)
