"""The flash attention a model runs with, measured at load on this CPU (server/engine/tuning.py).

Which candidate wins depends on the CPU and is not asserted: what is asserted is that every
shape is timed on the real model, the faster candidate is taken only beyond the margin, a
machine measures once, and a candidate llama.cpp cannot open is passed over, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp
import pytest

from server.doctor import doctor
from server.engine import tuning
from server.engine.llama import LlamaBackend, system_info
from server.engine.tuning import (
    LayoutChoice,
    LayoutMemory,
    Shape,
    choose,
    measure,
    measure_flash_attn,
    probe_shapes,
)
from server.loaded_model import choose_layout
from tests.conftest import make_settings, model_file


def _backend(flash_attn: str, slots: int = 2, n_ctx: int = 256) -> LlamaBackend:
    return LlamaBackend(
        model_file("smollm2"), n_ctx=n_ctx, n_slots=slots, n_threads=2, flash_attn=flash_attn
    )


def test_the_shapes_are_one_sequence_and_every_slot_after_a_short_and_a_long_prompt() -> None:
    assert probe_shapes(4, 2048) == [Shape(1, 64), Shape(4, 64), Shape(1, 1024), Shape(4, 1024)]
    # A short context cuts the long prompt to what fits beside the timed steps.
    assert probe_shapes(1, 200) == [Shape(1, 64), Shape(1, 200 - tuning.STEPS - 2)]
    assert Shape.parse("8x448") == Shape(8, 448)


def test_the_default_stays_unless_another_is_faster_by_the_margin() -> None:
    level = {"off": {"1x64": 100.0, "8x64": 200.0}, "on": {"1x64": 102.0, "8x64": 202.0}}
    assert choose(level) == "off"
    faster = {"off": {"1x64": 100.0, "8x64": 200.0}, "on": {"1x64": 90.0, "8x64": 300.0}}
    assert choose(faster) == "on"  # a geometric mean: 164 against 141
    assert choose({"on": {"1x64": 5.0}}) == "on"  # the only one that could be timed
    assert choose({}) == "off"


def test_measuring_times_every_shape_on_the_real_model_and_leaves_the_slots_empty() -> None:
    backend = _backend("off")
    try:
        shapes = probe_shapes(2, backend.n_ctx)
        rates = measure(backend, shapes)
        assert set(rates) == {s.name for s in shapes}
        assert all(rate > 0 for rate in rates.values())
        memory = llama_cpp.llama_get_memory(backend._ctx)
        assert all(llama_cpp.llama_memory_seq_pos_max(memory, s) == -1 for s in range(2))
    finally:
        backend.close()


def test_a_long_prompt_past_its_budget_is_measured_where_it_stopped() -> None:
    backend = _backend("on")
    try:
        rates = measure(backend, [Shape(1, 64), Shape(2, 64), Shape(1, 240)], fill_budget=0)
    finally:
        backend.close()
    # No time to read past the short prompt: the long shape is the short one, measured once.
    assert set(rates) == {"1x64", "2x64"}


def test_a_candidate_that_cannot_be_opened_is_passed_over() -> None:
    def open_probe(flash_attn: str) -> LlamaBackend:
        if flash_attn == "on":
            raise RuntimeError("this build has no flash attention")
        return _backend(flash_attn)

    choice = measure_flash_attn(open_probe, slots=2, n_ctx=256)
    assert choice.flash_attn == "off" and choice.source == "measured"
    assert set(choice.rates) == {"off"}

    def refuse(flash_attn: str) -> LlamaBackend:
        raise RuntimeError("no context")

    assert measure_flash_attn(refuse, slots=2, n_ctx=256) == LayoutChoice("off", "unmeasured")


def test_the_memory_keeps_whole_answers_and_ignores_a_broken_file(tmp_path: Path) -> None:
    memory = LayoutMemory(tmp_path / "deep" / "layouts.json")
    assert memory.recall("k") is None
    memory.remember("k", LayoutChoice("on", "measured", {"on": {"1x64": 9.0}}, 1.0))
    recalled = memory.recall("k")
    assert recalled == LayoutChoice("on", "remembered", {"on": {"1x64": 9.0}}, 1.0)
    assert [p.name for p in memory.path.parent.iterdir()] == ["layouts.json"]  # no temp left
    memory.path.write_text("{not json")
    assert memory.recall("k") is None
    memory.path.write_text(json.dumps({"k": {"flash_attn": "sideways", "source": "measured"}}))
    assert memory.recall("k") is None  # an answer no build can open with
    memory.path.write_text(json.dumps({"k": {"unknown": 1}}))
    assert memory.recall("k") is None


def test_the_memory_keeps_the_newest_entries_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuning, "MAX_REMEMBERED", 3)
    memory = LayoutMemory(tmp_path / "layouts.json")
    for i in range(5):
        memory.remember(f"k{i}", LayoutChoice("off", "measured"))
    assert list(json.loads(memory.path.read_text())) == ["k2", "k3", "k4"]


def test_loading_measures_once_per_machine_and_keeps_a_configured_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(layout_memory=tmp_path / "layouts.json")
    config = next(m for m in settings.models if m.name == "smollm2").model_copy(update={"slots": 2})
    path = model_file("smollm2")
    measured = choose_layout(config, path, 256, settings)
    assert measured.source == "measured" and measured.flash_attn in ("on", "off")
    assert set(measured.rates) == {"off", "on"}
    again = choose_layout(config, path, 256, settings)
    assert again.source == "remembered" and again.flash_attn == measured.flash_attn
    # Another slot count is another shape: measured on its own.
    other = config.model_copy(update={"slots": 1})
    assert choose_layout(other, path, 256, settings).source == "measured"

    def no_measuring(*args: object) -> LayoutChoice:
        raise AssertionError("a configured or GPU layout is not measured")

    monkeypatch.setattr("server.loaded_model.measure_flash_attn", no_measuring)
    pinned = config.model_copy(update={"flash_attn": "off"})
    assert choose_layout(pinned, path, 256, settings) == LayoutChoice("off", "configured")
    gpu = config.model_copy(update={"n_gpu_layers": -1})
    assert choose_layout(gpu, path, 256, settings) == LayoutChoice("auto", "gpu")


def test_doctor_shows_the_cpu_and_each_models_choice(tmp_path: Path) -> None:
    small = {"name": "smollm2", "path": str(model_file("smollm2")), "n_ctx": 256, "slots": 2}
    settings = make_settings(layout_memory=tmp_path / "layouts.json", models=[small])
    lines: list[str] = []
    assert doctor(settings, [], out=lines.append) == 0
    text = "\n".join(lines)
    assert "CPU: " in text and "llama.cpp: " in text and "AVX" in text
    assert "smollm2: " + str(model_file("smollm2")) in text
    assert "flash attention " in text and "(measured; off: 1x64 " in text
    assert "prompt-lookup speculation: " in text
    lines.clear()
    assert doctor(settings, ["smollm2"], out=lines.append) == 0
    assert "(remembered; off: 1x64 " in "\n".join(lines)
    lines.clear()
    assert doctor(settings, ["smollm2"], remeasure=True, out=lines.append) == 0
    assert "(measured; off: 1x64 " in "\n".join(lines)


def test_llama_cpp_is_built_without_openmp() -> None:
    """With OpenMP, a decode after another thread had decoded took up to twice as long
    (libgomp sleeps at barriers once its threads outnumber the cores): the loading thread's
    checks made every later step of the engine thread slow (scripts/llama_wheel.sh)."""
    info = system_info()
    assert "CPU :" in info
    assert "OPENMP = 1" not in info
