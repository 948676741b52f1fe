"""The model registry: names and aliases to models, loaded on first use, unloaded when idle.

An unknown name is a 404, never another model. A model that cannot load is a 503 that names
the reason, and it does not affect the others; the next request tries again.

Lifecycle: a model loads on its first request (concurrent first requests share one load) or at
start when ``preload``; it unloads after ``keep_alive`` idle seconds (a request's own
``keep_alive`` replaces the model's); a ``pin``ned model never unloads. With
``max_loaded_bytes`` set, loading a model first evicts the least recently used idle models
until it fits. A model is idle when no request holds a lease on it and its engine has nothing
queued or running: nothing in use is ever unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from server.errors import (
    ModelNotFoundError,
    ModelSourceError,
    ModelUnavailableError,
    ShuttingDownError,
    UnsupportedFeatureError,
)
from server.loaded_model import Lease, ModelHandle, load_model
from server.models.config import ModelConfig
from server.models.gguf import gguf_size
from server.models.pull import reference_name
from server.models.pulled import PulledModel, PulledModels
from server.models.sources import catalog_entry
from server.settings import Settings

logger = logging.getLogger(__name__)

# How often idle models are checked against their keep_alive.
REAP_INTERVAL = 0.5


class ModelRegistry:
    """Every configured model by name and alias; loads and unloads them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._configs: list[ModelConfig] = []
        self._by_name: dict[str, ModelConfig] = {}
        self._loaded: dict[str, ModelHandle] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Loads and unloads (by reason) per model, for /metrics.
        self._events: dict[str, Counter[str]] = {}
        self._pulled = PulledModels(settings.models_dir.expanduser())
        for model in settings.models:
            self._register(model)
        # Models pulled earlier (hearth pull, /api/pull) are served under their names too,
        # unless the config names them itself.
        try:
            for pulled in self._pulled.all():
                self.add_pulled(pulled)
        except ModelSourceError as exc:
            logger.error("cannot read the pulled models: %s", exc.message)
        self._accepting = True
        self._reaper: asyncio.Task[None] | None = None
        self.reaper_passes = 0
        self.created = int(time.time())

    def _register(self, model: ModelConfig) -> None:
        self._configs.append(model)
        for name in model.names:
            self._by_name[name] = model
        self._locks.setdefault(model.name, asyncio.Lock())
        self._events.setdefault(model.name, Counter())

    def add_pulled(self, pulled: PulledModel) -> ModelConfig | None:
        """Serve a pulled model by its name (at once: no restart); None when a configured
        model already has the name or pulls the same reference."""
        existing = self._by_name.get(pulled.name)
        if existing is not None and existing not in self._settings.models:
            self._forget(existing)  # pulled again: the new files from now on
        if pulled.name in self._by_name or any(
            c.source is not None and reference_name(c.source) == pulled.name for c in self._configs
        ):
            return None
        models_dir = self._settings.models_dir.expanduser()
        fields: dict[str, object] = {
            **pulled.settings,
            "name": pulled.name,
            "path": models_dir / pulled.gguf,
        }
        if pulled.template is not None:
            fields["chat_template_file"] = models_dir / pulled.template
        try:
            config = ModelConfig.model_validate(fields)
        except ValueError as exc:
            logger.error("pulled model %s cannot be served: %s", pulled.name, exc)
            return None
        self._register(config)
        return config

    def remove_pulled(self, name: str) -> bool:
        """Stop serving a pulled model (it must not be loaded); False if it is not one."""
        config = self._by_name.get(name)
        if config is None or config not in self._configs or config in self._settings.models:
            return False
        if config.name in self._loaded:
            raise ModelUnavailableError(f"model '{config.name}' is loaded; it cannot be removed")
        self._forget(config)
        return True

    def is_pulled(self, name: str) -> bool:
        """Whether ``name`` is served as a pulled model (not one of the config file's)."""
        config = self._by_name.get(name)
        return config is not None and config not in self._settings.models

    def _forget(self, config: ModelConfig) -> None:
        self._configs.remove(config)
        for alias in config.names:
            self._by_name.pop(alias, None)

    @property
    def pulled(self) -> PulledModels:
        return self._pulled

    @property
    def configs(self) -> list[ModelConfig]:
        return list(self._configs)

    def resolve(self, name: str) -> ModelConfig:
        """The config registered under ``name`` (a name or an alias), else 404."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ModelNotFoundError(name) from None

    def model_path(self, config: ModelConfig) -> Path:
        if config.upstream is not None:
            raise ValueError(f"model '{config.name}' is remote; it has no file")
        if config.path is not None:
            return self._settings.resolve_path(config.path)
        models_dir = self._settings.models_dir.expanduser()
        if config.source is not None:
            pulled = self._pulled.get(reference_name(config.source))
            # Not pulled yet: a path that is not there (can_load says no; a load names it).
            return models_dir / (pulled.gguf if pulled else f"(not pulled) {config.source}")
        assert config.package is not None
        return models_dir / catalog_entry(config.package).filename

    @property
    def accepting(self) -> bool:
        return self._accepting

    def can_load(self, config: ModelConfig) -> bool:
        """Remote, or its GGUF is in place."""
        return config.upstream is not None or self.model_path(config).is_file()

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def loaded_handle(self, name: str) -> ModelHandle | None:
        """The loaded model registered as ``name`` (a name or an alias), if it is loaded."""
        return self._loaded.get(self.resolve(name).name)

    def loaded_handles(self) -> list[ModelHandle]:
        return list(self._loaded.values())

    def failed_models(self) -> list[str]:
        """Loaded models whose engine stopped (each reloads on its next request)."""
        return [h.name for h in self._loaded.values() if h.engine.failed]

    def lifecycle_counts(self) -> dict[str, Counter[str]]:
        return {name: Counter(events) for name, events in self._events.items()}

    @property
    def loaded_bytes(self) -> int:
        return sum(h.size_bytes for h in self._loaded.values())

    async def checkout(
        self, name: str, *, keep_alive: float | None = None, may_shorten: bool = True
    ) -> Lease:
        """A lease on the loaded model for ``name``, loading it first if needed. ``keep_alive``
        (seconds; negative: forever) replaces the model's idle timeout from now on, if it is
        longer or the caller ``may_shorten`` it (an admin key, or a server without keys):
        any client may keep a model longer, only those may unload one others use."""
        config = self.resolve(name)
        if not self._accepting:
            raise ShuttingDownError("the server is shutting down", retry_after=5)
        if config.upstream is not None:
            raise UnsupportedFeatureError(
                f"model '{config.name}' is remote: this endpoint is served for local models only",
                param="model",
            )
        handle = self._loaded.get(config.name)
        if handle is None or handle.engine.failed:
            async with self._locks[config.name]:
                handle = self._loaded.get(config.name)
                if handle is not None and handle.engine.failed:
                    logger.error("model %s: its engine stopped; reloading it", config.name)
                    await self._unload(handle, "failed")
                    handle = None
                if handle is None:
                    handle = await self._load_within_budget(config)
        if keep_alive is not None and not config.pin:
            wanted = None if keep_alive < 0 else keep_alive
            current = handle.keep_alive
            longer = current is not None and (wanted is None or wanted > current)
            if may_shorten or longer:
                handle.keep_alive = wanted
        # Taken in the same event-loop turn as the lookup: the reaper cannot slip between.
        return handle.lease()

    @contextlib.asynccontextmanager
    async def use(
        self, name: str, *, keep_alive: float | None = None, may_shorten: bool = True
    ) -> AsyncIterator[ModelHandle]:
        """``async with registry.use(name) as handle``: a lease for one short piece of work."""
        lease = await self.checkout(name, keep_alive=keep_alive, may_shorten=may_shorten)
        try:
            yield lease.handle
        finally:
            lease.release()

    async def _load_within_budget(self, config: ModelConfig) -> ModelHandle:
        budget = self._settings.max_loaded_bytes
        if budget is not None:
            path = self.model_path(config)
            needed = gguf_size(path) if path.is_file() else 0
            await self._evict_for(needed, budget, config.name)
        handle = await asyncio.to_thread(self._load, config)
        if budget is not None and self.loaded_bytes + handle.size_bytes > budget:
            await self._evict_for(handle.size_bytes, budget, config.name)
            if self.loaded_bytes + handle.size_bytes > budget:
                await asyncio.to_thread(handle.close)
                raise ModelUnavailableError(
                    f"model '{config.name}' needs about {handle.size_bytes / 1e6:.0f} MB but "
                    f"only {(budget - self.loaded_bytes) / 1e6:.0f} MB of max_loaded_bytes "
                    "is free, and the loaded models are in use; retry later",
                    retry_after=10,
                )
        self._loaded[config.name] = handle
        self._events[config.name]["load"] += 1
        return handle

    async def _evict_for(self, needed: int, budget: int, loading: str) -> None:
        """Unload idle, unpinned models, least recently used first, until ``needed`` fits."""
        while self.loaded_bytes + needed > budget:
            candidates = [
                h
                for h in self._loaded.values()
                if h.idle and not h.config.pin and h.name != loading
            ]
            if not candidates:
                return
            victim = min(candidates, key=lambda h: h.last_used)
            logger.info("evicting model %s to make room for %s", victim.name, loading)
            await self._unload(victim, "evicted")

    async def _unload(self, handle: ModelHandle, reason: str) -> None:
        # Out of the table first, in this event-loop turn: a new request then loads afresh
        # rather than leasing the model being closed.
        if self._loaded.get(handle.name) is handle:
            del self._loaded[handle.name]
        self._events[handle.name][reason] += 1
        await asyncio.to_thread(handle.close)
        logger.info("unloaded model %s (%s)", handle.name, reason)

    async def unload_if_idle(self, name: str) -> bool:
        """Unload the model registered as ``name`` unless a request is using it; whether it
        is now unloaded."""
        handle = self._loaded.get(self.resolve(name).name)
        if handle is None:
            return True
        if not handle.idle:
            return False
        await self._unload(handle, "deleted")
        return True

    def start_reaper(self) -> None:
        """Unload models idle past their keep_alive, from now until :meth:`close`."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            await self.reap_idle()

    async def reap_idle(self) -> None:
        self.reaper_passes += 1  # (how a test knows a pass has looked since some moment)
        now = time.monotonic()
        for handle in list(self._loaded.values()):
            if handle.config.pin or handle.keep_alive is None or not handle.idle:
                continue
            if now - handle.last_used >= handle.keep_alive:
                await self._unload(handle, "keep_alive")

    def _load(self, config: ModelConfig) -> ModelHandle:
        return load_model(config, self.model_path(config), self._settings)

    def stop_accepting(self) -> None:
        """From now on every new request gets 503; what is queued or running carries on."""
        self._accepting = False
        for handle in self._loaded.values():
            handle.engine.stop_accepting()

    def cancel_all(self) -> None:
        """Stop every queued and running generation of every model."""
        for handle in self._loaded.values():
            handle.engine.cancel_all()

    def stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    def close(self) -> None:
        """Unload every model (blocking: the app's lifespan runs it in a worker thread)."""
        for handle in self._loaded.values():
            handle.close()
        self._loaded.clear()
