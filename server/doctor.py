"""``hearth doctor``: what this machine gives each configured model, before serving it.

It prints the CPU as llama.cpp sees it and, for every local model, its file, the context it
would get, and the choices loading makes by measurement on this CPU: the flash attention it
decodes fastest with (measured now unless remembered, and then remembered for ``serve``) and
whether a batch of one sequence's tokens decodes bit for bit as single tokens (what turns
prompt-lookup speculation on).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from server.engine.exactness import batch_rows_match_single
from server.engine.llama import system_info
from server.engine.tuning import cpu_signature
from server.errors import HearthError
from server.loaded_model import choose_layout, open_backend, speculation_on
from server.models.gguf import GGUFError, read_metadata
from server.registry import ModelRegistry
from server.settings import Settings


def doctor(
    settings: Settings,
    names: list[str],
    *,
    remeasure: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """Report on ``names`` (every configured model when empty); 1 if one cannot load. With
    ``remeasure``, what was remembered is measured again (and the new answer remembered)."""
    model, _, flags = cpu_signature().partition(" [")
    vector = [f for f in flags.rstrip("]").split() if f.startswith(("avx", "amx", "f16c", "fma"))]
    out(f"CPU: {model}, {os.cpu_count()} cores; {' '.join(vector) or 'no AVX'}")
    out(f"llama.cpp: {system_info()}")
    out(f"measured layouts are remembered in {settings.layout_memory.expanduser()}")
    registry = ModelRegistry(settings)
    configs = [registry.resolve(name) for name in names] if names else registry.configs
    status = 0
    for config in configs:
        if config.upstream is not None:
            out(f"\n{config.name}: remote ({config.upstream}); nothing to measure here")
            continue
        path = registry.model_path(config)
        out(f"\n{config.name}: {path}")
        if not path.is_file():
            out("  missing: pull it first (`hearth pull`)")
            status = 1
            continue
        try:
            metadata = read_metadata(path)
        except (GGUFError, OSError):
            metadata = {}
        context = config.context(metadata)
        out(
            f"  {path.stat().st_size / 1e6:.0f} MB; n_ctx {context.n_ctx} ({context.reason}); "
            f"slots {config.slots}; threads {config.effective_threads()}"
        )
        try:
            layout = choose_layout(config, path, context.n_ctx, settings, remeasure=remeasure)
            out(f"  {layout.describe()}")
            backend = open_backend(path, config, context.n_ctx, layout.flash_attn)
        except HearthError as exc:
            out(f"  cannot load: {exc.message}")
            status = 1
            continue
        try:
            if layout.flash_attn == "off":
                exact = "not checked (flash attention off: never exact on the CPUs measured)"
            else:  # kept per model identity: speculation_on asks again for nothing
                exact = "yes" if batch_rows_match_single(backend) else "no"
            speculation = "on" if speculation_on(config, layout, backend) else "off"
        finally:
            backend.close()
        out(f"  batches decode exactly as single tokens: {exact}")
        configured = " (configured)" if config.speculative.enabled is not None else ""
        out(f"  prompt-lookup speculation: {speculation}{configured}")
    return status
