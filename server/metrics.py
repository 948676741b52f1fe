"""Prometheus metrics, served at GET /metrics (prometheus-client, in the app's own registry).

Two kinds: what happens to requests is counted and timed as it happens (:class:`Metrics`);
what the engines hold right now (queues, slots, caches, loaded models) is read from them at
scrape time by :class:`_LiveCollector`, so the engine threads never touch a metric.
"""

from __future__ import annotations

import time
from collections import Counter as TallyCounter
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.engine.jobs import SchedulerStats
from server.engine.kv import KV_COUNTERS

if TYPE_CHECKING:
    from server.loaded_model import ModelHandle
    from server.registry import ModelRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# hearth_kv_state_shared's events, and the state cache's counters behind them.
SHARED_STATE_EVENTS = {"found": "found", "removed": "removed_by_others", "used": "used_by_others"}


@dataclass
class RunRecord:
    """What one finished generation or embedding request reports."""

    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    embedded_tokens: int = 0
    queue_seconds: list[float] = field(default_factory=list)
    time_to_first_token: float | None = None
    completion_id: str = ""
    choices: int = 1
    finish: str = ""
    # Prompt lookup: tokens guessed, and those the model chose too.
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """What counts against an API key's tokens per minute."""
        return self.prompt_tokens + self.completion_tokens + self.embedded_tokens

    def log_fields(self) -> dict[str, object]:
        """The record as the request's log line shows it."""
        if self.embedded_tokens:
            return {"embedded_tokens": self.embedded_tokens}
        return {
            "completion_id": self.completion_id,
            "choices": self.choices,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "queue_wait": round(max(self.queue_seconds, default=0.0), 3),
            "ttft": None
            if self.time_to_first_token is None
            else round(self.time_to_first_token, 3),
            "finish": self.finish,
            "drafted": self.drafted_tokens or None,
            "accepted": self.accepted_tokens if self.drafted_tokens else None,
        }


class Metrics:
    """The app's metrics. Built in the lifespan, kept on the app state."""

    def __init__(self, registry: ModelRegistry, *, compat: str = "none") -> None:
        self.started = time.monotonic()
        # The token counts again as plain numbers, per model and kind, for GET /status.
        self.token_totals: defaultdict[str, TallyCounter[str]] = defaultdict(TallyCounter)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hearth_requests",
            "HTTP requests by route, model and status code.",
            ["route", "model", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "hearth_request_duration_seconds",
            "Time from the request's arrival to the end of its response (streams included).",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "hearth_tokens",
            "Tokens by model and kind: prompt (in), completion (out), cached (prompt tokens "
            "whose KV was reused), embedding (embedded input).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "hearth_time_to_first_token_seconds",
            "Time from a prepared (tokenized) request to its first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "hearth_queue_wait_seconds",
            "Time a sequence waited in its model's queue for a free slot.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.rejections = Counter(
            "hearth_rejected_requests",
            "Requests refused before running, by reason (unauthorized, rate_limited, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(registry, vllm_names=compat == "vllm"))

    def record_run(self, record: RunRecord) -> None:
        model = record.model
        for kind, count in (
            ("prompt", record.prompt_tokens),
            ("completion", record.completion_tokens),
            ("cached", record.cached_tokens),
            ("embedding", record.embedded_tokens),
        ):
            if count:
                self.tokens.labels(model, kind).inc(count)
                self.token_totals[model][kind] += count
        for seconds in record.queue_seconds:
            self.queue_wait.labels(model).observe(seconds)
        if record.time_to_first_token is not None:
            self.time_to_first_token.labels(model).observe(record.time_to_first_token)

    def record_request(self, route: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(route, model, str(status)).inc()
        self.request_seconds.labels(route, model).observe(seconds)

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


class _LiveCollector(Collector):
    """Engine state at scrape time."""

    def __init__(self, registry: ModelRegistry, *, vllm_names: bool = False) -> None:
        self._registry = registry
        self._vllm_names = vllm_names

    def collect(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily(
            "hearth_model_loaded", "1 if the model is loaded now, else 0.", labels=["model"]
        )
        loads = CounterMetricFamily(
            "hearth_model_loads", "Times the model was loaded.", labels=["model"]
        )
        unloads = CounterMetricFamily(
            "hearth_model_unloads",
            "Times the model was unloaded, by reason (keep_alive, evicted, ...).",
            labels=["model", "reason"],
        )
        for name, events in self._registry.lifecycle_counts().items():
            loaded.add_metric([name], 1.0 if self._registry.is_loaded(name) else 0.0)
            loads.add_metric([name], events.get("load", 0))
            for reason, count in events.items():
                if reason != "load":
                    unloads.add_metric([name, reason], count)
        yield from (loaded, loads, unloads)
        handles = self._registry.loaded_handles()
        yield from _engine_metrics(handles)
        if self._vllm_names:
            yield from _vllm_metrics(handles)


def _engine_metrics(handles: Iterable[ModelHandle]) -> Iterator[Metric]:
    gauges: dict[str, tuple[str, Callable[[ModelHandle, SchedulerStats], float]]] = {
        "hearth_queue_depth": ("Requests waiting for a slot.", lambda h, s: s.queued + s.deferred),
        "hearth_slots_busy": ("Slots generating now.", lambda h, s: s.running),
        "hearth_slots": ("Slots of the model.", lambda h, s: h.config.slots),
        "hearth_model_requests_active": (
            "Requests holding the model (preparing, queued, running or streaming).",
            lambda h, s: h.active,
        ),
        "hearth_kv_cache_usage": (
            "Fraction (0-1) of the model's KV cells held by running sequences (cells idle slots "
            "keep for prefix reuse are free to take).",
            lambda h, s: _usage(s),
        ),
        "hearth_kv_cache_cells": (
            "KV cells of the model (slots times n_ctx; a cell holds one token, the block size "
            "is 1).",
            lambda h, s: s.kv_cells,
        ),
    }
    families = {
        name: GaugeMetricFamily(name, help_text, labels=["model"])
        for name, (help_text, _) in gauges.items()
    }
    cache = {
        kind: CounterMetricFamily(
            f"hearth_prefix_cache_{kind}",
            f"KV prefix reuse: {kind.replace('_', ' ')}.",
            labels=["model"],
        )
        for kind in KV_COUNTERS
    }
    speculation = CounterMetricFamily(
        "hearth_speculative_tokens",
        "Prompt-lookup speculation: tokens guessed (drafted) and those the model chose too "
        "(accepted).",
        labels=["model", "kind"],
    )
    state_bytes = GaugeMetricFamily(
        "hearth_kv_state_bytes", "Saved KV states, by where they are.", labels=["model", "store"]
    )
    state_evictions = CounterMetricFamily(
        "hearth_kv_state_evictions", "Saved KV states evicted, by store.", labels=["model", "store"]
    )
    shared = CounterMetricFamily(
        "hearth_kv_state_shared",
        "Saved KV states in a folder shared with other servers: states they saved that this "
        "one found (found), files they removed (removed), files they restored (used).",
        labels=["model", "event"],
    )
    for handle in handles:
        name = handle.name
        stats = handle.engine.stats()
        for metric, (_, read) in gauges.items():
            families[metric].add_metric([name], float(read(handle, stats)))
        for kind, family in cache.items():
            family.add_metric([name], stats.cache.get(kind, 0))
        for kind in ("drafted", "accepted"):
            speculation.add_metric([name, kind], stats.speculation.get(kind, 0))
        if stats.states is not None:
            for store in ("ram", "disk"):
                state_bytes.add_metric([name, store], stats.states.get(f"{store}_bytes", 0))
                state_evictions.add_metric([name, store], stats.states.get(f"{store}_evictions", 0))
            for event, key in SHARED_STATE_EVENTS.items():
                shared.add_metric([name, event], stats.states.get(key, 0))
    yield from families.values()
    yield from cache.values()
    yield from (speculation, state_bytes, state_evictions, shared)


def _usage(stats: SchedulerStats) -> float:
    return stats.kv_cells_used / stats.kv_cells if stats.kv_cells else 0.0


def _vllm_metrics(handles: Iterable[ModelHandle]) -> Iterator[Metric]:
    """The load signals under vLLM's names, for routers that read those by default."""
    waiting = GaugeMetricFamily(
        "vllm:num_requests_waiting", "Requests waiting for a slot.", labels=["model_name"]
    )
    running = GaugeMetricFamily(
        "vllm:num_requests_running", "Sequences generating now.", labels=["model_name"]
    )
    usage = [
        GaugeMetricFamily(name, "KV cache usage, 1 meaning full.", labels=["model_name"])
        for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    ]
    config = GaugeMetricFamily(
        "vllm:cache_config_info",
        "The KV cache's geometry: block_size (tokens a block holds) and num_gpu_blocks.",
        labels=["model_name", "block_size", "num_gpu_blocks"],
    )
    for handle in handles:
        stats = handle.engine.stats()
        waiting.add_metric([handle.name], stats.queued + stats.deferred)
        running.add_metric([handle.name], stats.running)
        for family in usage:
            family.add_metric([handle.name], _usage(stats))
        config.add_metric([handle.name, "1", str(stats.kv_cells)], 1.0)
    yield from (waiting, running, *usage, config)
