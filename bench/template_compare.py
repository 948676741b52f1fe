"""Hearth's prompt beside llama.cpp's llama-server's for every real chat template llama.cpp
ships, as a table.

Each template of the corpus (``make templates``) is served by its own llama-server (built by
bench/build_llama_server.sh) with SmolLM2 and ``--chat-template-file``; both render the tool
conversation of tests/services/test_template_corpus.py. One row per template: the outcome
(same, differ, both refuse, or one refusing), and why, from the table of kept differences in
tests/services/test_template_llama_server.py, or the first difference where none is recorded.
Exits 1 when an outcome is neither as recorded nor the same. A comparison, not a benchmark.

Usage: python bench/template_compare.py [--llama-server PATH] [--model-path GGUF] [NAME...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import model_file
from tests.services.test_template_corpus import corpus, corpus_dir
from tests.services.test_template_llama_server import (
    DIFFERENCES,
    Comparison,
    compare,
    llama_server_binary,
    unexpected,
)


def row(comparison: Comparison) -> tuple[str, bool]:
    """The table row for ``comparison``, and whether its outcome is the expected one."""
    problem = unexpected(comparison)
    difference = DIFFERENCES.get(comparison.name)
    note = f"UNEXPECTED: {problem}" if problem else difference.why if difference else ""
    if not problem and comparison.outcome == "both refuse":
        note = f"Hearth: {comparison.hearth.error}"
    note = " ".join(note.split()).replace("|", "\\|")
    return f"| {comparison.name} | {comparison.outcome} | {note} |", not problem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llama-server", type=Path, default=llama_server_binary())
    parser.add_argument("--model-path", type=Path, help="GGUF model (default: SmolLM2)")
    parser.add_argument("names", nargs="*", help="templates to compare (default: all)")
    args = parser.parse_args(argv)
    names = args.names or corpus()
    if not names:
        print(f"no templates in {corpus_dir()}: run `make templates`", file=sys.stderr)
        return 2
    if not args.llama_server.is_file():
        print(f"no llama-server at {args.llama_server}: run bench/build_llama_server.sh")
        return 2
    model = args.model_path or model_file("smollm2")
    print("| template | outcome | why |")
    print("|---|---|---|")
    failures = 0
    for name in names:
        line, ok = row(compare(args.llama_server, model, name))
        failures += not ok
        print(line, flush=True)
    print(f"\n{len(names)} templates, {failures} unexpected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
