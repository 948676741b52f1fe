"""Choices whose fastest answer depends on the CPU, measured at load instead of assumed.

llama.cpp picks its kernels by the CPU's vector extensions and the batch's shape, so a layout
that decodes fastest on one machine can lose on the next: flash attention off won by 1.7-2.7x
past 1,000 tokens of context on an Intel host, and lost at 8 streams on an AMD one (issue 28).
So when the model entry leaves ``flash_attn`` unset, loading times a few decode steps of each
candidate at the shapes that matter (one sequence and every slot, after a short and a long
prompt) and opens the model with the fastest. The answer is kept in a small JSON file keyed by
the model's identity, the layout, the llama.cpp build and the CPU, so each machine measures once.

Only layouts that change speed and nothing a client sees are candidates. The KV cache's
element types change outputs (q8_0 keys are not f16 keys), so they stay the user's choice;
threads stay every core (fewer lost on every shape measured on 2 cores); the micro-batch is
the whole batch already (a prefill chunk is one ubatch, a decode step is a few rows).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from server.engine.backend import BatchEntry
from server.errors import ModelUnavailableError

if TYPE_CHECKING:  # the probe drives the real backend, which does not import this module
    from server.engine.llama import LlamaBackend

logger = logging.getLogger(__name__)

FLASH_ATTN_CANDIDATES = ("off", "on")
# A candidate replaces the default only when it is this much faster: two sequential second-long
# timings on a shared machine differ by a few percent with nothing changed.
MARGIN = 1.03
# Timed decode steps per shape (after one untimed step), and the prompt lengths measured.
STEPS = 6
SHORT, LONG = 64, 1024
# Seconds the first candidate may spend reading the long prompt; it is measured at whatever
# context that reached (the others then at the same).
FILL_BUDGET = 1.5
# Entries the memory file keeps (the newest): one per model layout per machine.
MAX_REMEMBERED = 256
# Bump when the measurement changes, so earlier answers are measured again.
VERSION = 1


@dataclass(frozen=True)
class Shape:
    """A decode step of ``rows`` sequences, each ``context`` cells long."""

    rows: int
    context: int

    @property
    def name(self) -> str:
        return f"{self.rows}x{self.context}"

    @classmethod
    def parse(cls, name: str) -> Shape:
        rows, _, context = name.partition("x")
        return cls(int(rows), int(context))


@dataclass
class LayoutChoice:
    """The flash attention a model runs with, where that came from, and what was measured:
    tokens per second per candidate and shape (empty unless measured)."""

    flash_attn: str
    source: str  # configured | gpu | measured | remembered | unmeasured
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    measured_at: float = 0.0

    def describe(self) -> str:
        """One line for the log and ``hearth doctor``."""
        if not self.rates:
            return f"flash attention {self.flash_attn} ({self.source})"
        scores = {c: _score(r) for c, r in self.rates.items()}
        parts = []
        for candidate, rates in self.rates.items():
            shapes = ", ".join(f"{s} {v:.0f}" for s, v in rates.items())
            parts.append(f"{candidate}: {shapes} tok/s (mean {scores[candidate]:.0f})")
        return f"flash attention {self.flash_attn} ({self.source}; {'; '.join(parts)})"


def probe_shapes(slots: int, n_ctx: int) -> list[Shape]:
    """One sequence and every slot, after a short and (where the context allows) a long prompt."""
    longest = n_ctx - STEPS - 2
    contexts = [c for c in (SHORT, min(LONG, longest)) if c >= 16]
    rows = sorted({1, slots})
    return [Shape(r, c) for c in dict.fromkeys(contexts) for r in rows]


def measure(
    backend: LlamaBackend, shapes: list[Shape], fill_budget: float = math.inf
) -> dict[str, float]:
    """Tokens per second of ``STEPS`` decode steps at each shape, on slots filled with a
    prompt (slot 0 read in pieces, the others copied from it), keyed by shape name. Reading
    a longer prompt than the shortest stops once it has taken ``fill_budget`` seconds: that
    shape is then measured at the context reached, and named for it (a big model on a small CPU
    reads 1,024 tokens in minutes). Clears every slot."""
    text = "The clerks copied the old accounts into new books, line by line, every spring. "
    needed = max(s.context for s in shapes) + STEPS + 2
    tokens: list[int] = []
    while len(tokens) < needed:
        tokens += backend.tokenize(text, add_special=False)
    piece = max(16, min(backend.n_batch, 128))
    rates: dict[str, float] = {}
    filled = 0
    try:
        contexts = sorted({s.context for s in shapes})
        for context in contexts:
            # Slot 0 grows to each context in turn, shortest first (that one whole).
            budget = fill_budget if context != contexts[0] else math.inf
            started = time.perf_counter()
            while filled < context and time.perf_counter() - started < budget:
                end = min(context, filled + piece)
                backend.decode(
                    [BatchEntry(0, tokens[p], p, p == end - 1) for p in range(filled, end)]
                )
                filled = end
            for rows in sorted({s.rows for s in shapes if s.context == context}):
                shape = Shape(rows, filled)
                if shape.name in rates:  # a cut prompt that reached no further than the last
                    continue
                for slot in range(1, rows):
                    backend.copy_sequence(0, slot)
                rates[shape.name] = _time_steps(backend, tokens, shape)
                if not backend.truncate(0, filled):  # a cache that cannot be cut: refill
                    filled = 0
                for slot in range(1, rows):
                    backend.clear(slot)
    finally:
        for slot in range(backend.n_slots):
            backend.clear(slot)
    return rates


def _time_steps(backend: LlamaBackend, tokens: list[int], shape: Shape) -> float:
    """Rows decoded per second in the median of ``STEPS`` steps (after one untimed step, which
    also carries out pending sequence copies): a step another process preempted is an outlier,
    not a share of the answer."""
    times = []
    for step in range(STEPS + 1):
        position = shape.context + step
        batch = [BatchEntry(s, tokens[position], position, True) for s in range(shape.rows)]
        started = time.perf_counter()
        backend.decode(batch)
        if step:
            times.append(time.perf_counter() - started)
    middle = statistics.median(times)
    return shape.rows / middle if middle > 0 else 0.0


def choose(rates: dict[str, dict[str, float]], default: str = FLASH_ATTN_CANDIDATES[0]) -> str:
    """The candidate with the best geometric mean of its rates over the shapes; ``default``
    unless another beats it by :data:`MARGIN`."""
    scores = {c: _score(r) for c, r in rates.items() if r}
    if default not in scores:
        return max(scores, key=scores.__getitem__) if scores else default
    best = max(scores, key=scores.__getitem__)
    return best if scores[best] > scores[default] * MARGIN else default


def _score(rates: dict[str, float]) -> float:
    values = [v for v in rates.values() if v > 0]
    if not values:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def measure_flash_attn(
    open_probe: Callable[[str], LlamaBackend], slots: int, n_ctx: int
) -> LayoutChoice:
    """Open a probe context per candidate (one at a time: each holds a KV cache), time the
    probe shapes on it and pick. A candidate llama.cpp cannot open or decode is skipped."""
    rates: dict[str, dict[str, float]] = {}
    shapes = probe_shapes(slots, n_ctx)
    for candidate in FLASH_ATTN_CANDIDATES:
        try:
            backend = open_probe(candidate)
        except (ModelUnavailableError, RuntimeError, OSError) as exc:  # this build cannot
            logger.warning("flash attention %s could not be opened to measure: %s", candidate, exc)
            continue
        try:
            rates[candidate] = measure(backend, shapes, FILL_BUDGET)
            # Every later candidate at the contexts the first reached in its budget.
            shapes = [Shape.parse(name) for name in rates[candidate]]
        except RuntimeError as exc:  # a decode that fails: no candidate
            logger.warning("flash attention %s could not be measured: %s", candidate, exc)
        finally:
            backend.close()
    if not rates:
        return LayoutChoice(FLASH_ATTN_CANDIDATES[0], "unmeasured")
    return LayoutChoice(choose(rates), "measured", rates, time.time())


def cpu_signature() -> str:
    """The CPU's model name and vector extensions: what llama.cpp picks its kernels by."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        pass
    return f"{model} [{flags}]"


class LayoutMemory:
    """Measured choices kept across restarts in one JSON file: ``{key: LayoutChoice}``. A
    missing or unreadable file is an empty memory; writes replace the file whole (two servers
    measuring at once each leave a whole file, the later one winning)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def recall(self, key: str) -> LayoutChoice | None:
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            choice = LayoutChoice(**entry)
        except TypeError:
            return None
        if choice.flash_attn not in FLASH_ATTN_CANDIDATES:
            return None
        choice.source = "remembered"
        return choice

    def remember(self, key: str, choice: LayoutChoice) -> None:
        entries = self._read()
        entries.pop(key, None)
        entries[key] = asdict(choice)
        kept = dict(list(entries.items())[-MAX_REMEMBERED:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _replacing(self.path) as fh:
                json.dump(kept, fh, indent=1)
        except OSError as exc:
            logger.warning("could not keep the measured layout in %s: %s", self.path, exc)

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


@contextmanager
def _replacing(path: Path) -> Iterator[IO[str]]:
    """A file written beside ``path`` and renamed over it once whole."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            yield fh
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
