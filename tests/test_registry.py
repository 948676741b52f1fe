"""Model lifecycle on the real models: load on use, keep_alive, pinning, the memory budget,
and models that cannot load."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from server.errors import ModelUnavailableError, UnsupportedFeatureError
from server.registry import ModelRegistry
from server.settings import Settings
from tests.conftest import make_settings

# Both models fit alone, not together: SmolLM2 with 8 slots is ~290 MB, Gemma ~290 MB.
BUDGET = 450_000_000


def settings_with(*, budget: int | None = None, **per_model: dict[str, Any]) -> Settings:
    base = make_settings(max_loaded_bytes=budget)
    models = [
        m.model_copy(update={"preload": False, **per_model.get(m.name.replace("-", "_"), {})})
        for m in base.models
    ]
    return base.model_copy(update={"models": models})


def run(scenario: Callable[[ModelRegistry], Awaitable[None]], settings: Settings) -> None:
    async def main() -> None:
        registry = ModelRegistry(settings)
        registry.start_reaper()
        try:
            await scenario(registry)
        finally:
            registry.stop_reaper()
            await asyncio.to_thread(registry.close)

    asyncio.run(main())


async def reaper_looked_twice(registry: ModelRegistry) -> None:
    """Until two passes of the reaper have looked at the models since now: the second comes
    a whole interval later, past any keep_alive shorter than it, so a model still loaded
    then was kept on purpose (not merely not looked at yet)."""
    since = registry.reaper_passes
    await wait_for(lambda: registry.reaper_passes >= since + 2)


async def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never became true")


def test_concurrent_first_requests_share_one_load() -> None:
    async def scenario(registry: ModelRegistry) -> None:
        leases = await asyncio.gather(*(registry.checkout("smollm2") for _ in range(4)))
        assert len({id(lease.handle) for lease in leases}) == 1
        assert registry.lifecycle_counts()["smollm2"]["load"] == 1
        assert leases[0].handle.active == 4
        for lease in leases:
            lease.release()
        assert leases[0].handle.active == 0

    run(scenario, settings_with())


def test_an_idle_model_unloads_after_keep_alive_and_reloads_on_use() -> None:
    async def scenario(registry: ModelRegistry) -> None:
        async with registry.use("gemma3-270m") as handle:
            assert handle.keep_alive == 0.3
            await reaper_looked_twice(registry)
            assert registry.is_loaded("gemma3-270m")  # held by a lease: never unloaded
        await wait_for(lambda: not registry.is_loaded("gemma3-270m"))
        assert registry.lifecycle_counts()["gemma3-270m"]["keep_alive"] == 1
        async with registry.use("gemma3-270m"):
            assert registry.lifecycle_counts()["gemma3-270m"]["load"] == 2

    run(scenario, settings_with(gemma3_270m={"keep_alive": 0.3}))


def test_a_requests_keep_alive_replaces_the_models() -> None:
    async def scenario(registry: ModelRegistry) -> None:
        (await registry.checkout("smollm2", keep_alive=0)).release()
        await wait_for(lambda: not registry.is_loaded("smollm2"))
        (await registry.checkout("smollm2", keep_alive=-1)).release()
        await reaper_looked_twice(registry)
        assert registry.is_loaded("smollm2")

    run(scenario, settings_with(smollm2={"keep_alive": 3600}))


def test_a_pinned_model_never_unloads() -> None:
    async def scenario(registry: ModelRegistry) -> None:
        (await registry.checkout("smollm2", keep_alive=0)).release()
        await reaper_looked_twice(registry)
        assert registry.is_loaded("smollm2")

    run(scenario, settings_with(smollm2={"pin": True, "keep_alive": 0.1}))


def test_the_budget_evicts_the_least_recently_used_idle_model() -> None:
    async def scenario(registry: ModelRegistry) -> None:
        (await registry.checkout("smollm2")).release()
        async with registry.use("gemma3-270m"):
            assert not registry.is_loaded("smollm2")
            assert registry.loaded_bytes <= BUDGET
            # A model in use is never evicted: the other cannot load now.
            with pytest.raises(ModelUnavailableError, match="in use"):
                await registry.checkout("smollm2")
        (await registry.checkout("smollm2")).release()
        assert not registry.is_loaded("gemma3-270m")
        counts = registry.lifecycle_counts()
        assert counts["smollm2"]["evicted"] == 1 and counts["gemma3-270m"]["evicted"] == 1

    run(scenario, settings_with(budget=BUDGET))


def test_a_model_that_cannot_load_is_503_and_leaves_the_others_alone(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    base = settings_with()
    models = [
        *base.models,
        base.models[0].model_copy(
            update={"name": "missing", "aliases": [], "path": tmp_path / "no.gguf"}
        ),
        base.models[0].model_copy(update={"name": "broken", "aliases": [], "path": broken}),
    ]

    async def scenario(registry: ModelRegistry) -> None:
        with pytest.raises(ModelUnavailableError, match="missing"):
            await registry.checkout("missing")
        with pytest.raises(ModelUnavailableError, match="could not load"):
            await registry.checkout("broken")
        async with registry.use("smollm2") as handle:
            assert handle.tokenize("hello", add_special=False)

    run(scenario, base.model_copy(update={"models": models}))


def test_remote_models_are_not_loaded_here() -> None:
    base = settings_with()
    remote = base.models[0].model_copy(
        update={"name": "far", "aliases": [], "path": None, "upstream": "http://127.0.0.1:9/v1"}
    )

    async def scenario(registry: ModelRegistry) -> None:
        with pytest.raises(UnsupportedFeatureError, match="remote"):
            await registry.checkout("far")

    run(scenario, base.model_copy(update={"models": [*base.models, remote]}))


def test_two_entries_of_one_gguf_keep_their_saved_states_apart(tmp_path: Path) -> None:
    base = next(m for m in make_settings().models if m.name == "smollm2")
    models = [
        base.model_copy(update={"name": "one", "aliases": [], "preload": False}),
        base.model_copy(update={"name": "two/b", "aliases": [], "preload": False}),
    ]
    settings = make_settings(models=models, kv_cache_dir=tmp_path, kv_cache_disk_bytes=1 << 20)
    registry = ModelRegistry(settings)

    async def load_both() -> list[Path]:
        dirs = []
        for name in ("one", "two/b"):
            lease = await registry.checkout(name)
            cache = lease.handle.engine._scheduler._kv.cache
            assert cache is not None and cache.folder is not None
            dirs.append(cache.folder)
            lease.release()
        return dirs

    try:
        first, second = asyncio.run(load_both())
    finally:
        registry.close()
    assert first != second
    assert first.parent.parent == second.parent.parent == tmp_path
