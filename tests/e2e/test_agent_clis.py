"""The real agent CLIs from npm, Claude Code and Codex, each finish a turn against a default
server: the shipped config/models.toml, with a cap on answers (a small model may not stop).

Each runs with an isolated HOME, the server's URL and a dummy key in its environment, and
nothing else: it sends its real request (its own instructions and 12 to 22 tools), reads the
whole streamed answer and ends the turn with text. Every request it made must have been
answered 200: an HTTP error is never the protocol working. The CLIs are installed once into a
cache folder (``HEARTH_AGENTS_DIR``, default ``~/.cache/hearth/agents``); where npm is
missing, these tests skip and say so.

Each agent also runs against SmolLM2 served under another family's chat template from
llama.cpp's corpus (issue 25): Claude Code under Llama 3.1's (a bare JSON call, one per turn),
Codex under gpt-oss's (Harmony), so that a turn finishes whatever format the model's template
writes calls in.

A first turn reads some 9,000 to 23,000 prompt tokens, a minute or two on two cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.conftest import ServerProcess
from tests.services.test_template_corpus import corpus, corpus_dir

CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.332"
CODEX = "@openai/codex@0.171.0"
REPO = Path(__file__).resolve().parents[2]
AGENTS_DIR = Path(os.environ.get("HEARTH_AGENTS_DIR", "~/.cache/hearth/agents")).expanduser()
# A prompt a first turn can answer without tools; the tools are sent all the same.
PROMPT = "Reply with one word: hello."
TURN_TIMEOUT = 900
ACCESS = re.compile(r"method=(\S+) path=(\S+) status=(\d+)")
# The models the agents run against: the shipped one, and SmolLM2 under other templates.
TEMPLATES = {
    "smollm2-llama3": "meta-llama-Llama-3.1-8B-Instruct",
    "smollm2-gpt-oss": "openai-gpt-oss-120b",
}


def models(other: str) -> list[object]:
    """The shipped model, and SmolLM2 under another family's template (skipped without the
    corpus). Each agent takes one of the two: together they cover both formats, and a turn
    costs a minute or two of the suite."""
    template = TEMPLATES[other]
    reason = "no chat template corpus: run `make templates`"
    return [
        "smollm2",
        pytest.param(other, marks=pytest.mark.skipif(template not in corpus(), reason=reason)),
    ]


def _installed(package: str) -> Path:
    """The package's folder in the cache (installed now if missing), or a skip."""
    name, version = package.rsplit("@", 1)
    folder = AGENTS_DIR / f"{name.strip('@').replace('/', '-')}-{version}"
    binary = folder / "node_modules" / ".bin" / name.split("/")[-1].removesuffix("-code")
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is missing: install Node.js and npm to run {package} against Hearth")
    folder.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), package]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not binary.exists():
        pytest.fail(f"npm could not install {package}:\n{result.stdout}\n{result.stderr}")
    return binary


def answered(server: ServerProcess, path: str) -> list[int]:
    """The statuses of every request to ``path`` so far, from the server's access log."""
    found = (ACCESS.search(line) for line in server.log().splitlines())
    return [int(m.group(3)) for m in found if m and m.group(2).split("?")[0] == path]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`hearth serve` with the shipped config/models.toml, answers capped at 64 tokens, its
    own KV folder and response store."""
    tmp = tmp_path_factory.mktemp("agents-server")
    process = ServerProcess(tmp, {}, [])
    config = (REPO / "config" / "models.toml").read_text()
    for name, template in TEMPLATES.items():
        if template in corpus():
            config += (
                f'\n[[models]]\nname = "{name}"\npackage = "smollm2"\nn_ctx = 32768\n'
                f"slots = 1\nthreads = 0\n"
                f'chat_template_file = "{corpus_dir() / (template + ".jinja")}"\n'
            )
    process.config = tmp / "models.toml"
    process.config.write_text(config)
    process.args = ["--max-tokens-cap", "64", "--kv-cache-dir", str(tmp / "kv")]
    process.args += ["--responses-db", str(tmp / "responses.sqlite3")]
    try:
        yield process.start()
    finally:
        process.stop()


def _run(command: list[str], home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    # The agent sees this environment only: no real keys, no outside endpoints.
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    return subprocess.run(
        command,
        cwd=work,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=TURN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("model", models("smollm2-llama3"))
def test_claude_code_finishes_a_turn(server: ServerProcess, tmp_path: Path, model: str) -> None:
    claude = _installed(CLAUDE_CODE)
    before = len(answered(server, "/v1/messages"))
    result = _run(
        [str(claude), "-p", PROMPT, "--model", model, "--output-format", "json"],
        tmp_path,
        {
            "ANTHROPIC_BASE_URL": server.base_url,
            "ANTHROPIC_API_KEY": "sk-hearth-test",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        },
    )
    said = f"{result.stdout}\n{result.stderr}\n{server.log()[-3000:]}"
    assert result.stdout.strip(), said
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["type"] == "result", said
    # Never an HTTP error: every request answered 200, and Claude Code saw none.
    assert outcome["api_error_status"] is None, outcome
    statuses = answered(server, "/v1/messages")[before:]
    assert statuses and set(statuses) == {200}, statuses
    if outcome["is_error"]:
        # Every answer ran into the cap: Claude Code's own message for it, the protocol working.
        assert outcome["api_error"] == "max_output_tokens", outcome
        assert "output token maximum" in outcome["result"]
    else:
        assert result.returncode == 0 and outcome["subtype"] == "success", outcome
        assert isinstance(outcome["result"], str) and outcome["result"].strip()


@pytest.mark.parametrize("model", models("smollm2-gpt-oss"))
def test_codex_finishes_a_turn(server: ServerProcess, tmp_path: Path, model: str) -> None:
    codex = _installed(CODEX)
    before = len(answered(server, "/v1/responses"))
    settings = tmp_path / ".codex"
    settings.mkdir()
    (settings / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "hearth"\n'
        "check_for_update_on_startup = false\n"
        "[analytics]\n"
        "enabled = false\n"
        "[model_providers.hearth]\n"
        'name = "Hearth"\n'
        f'base_url = "{server.base_url}/v1"\n'
        'env_key = "HEARTH_API_KEY"\n'
        'wire_api = "responses"\n'
    )
    result = _run(
        [str(codex), "exec", "--skip-git-repo-check", "--json", PROMPT],
        tmp_path,
        {"HEARTH_API_KEY": "sk-hearth-test"},
    )
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    kinds = [event.get("type") for event in events]
    statuses = answered(server, "/v1/responses")[before:]
    assert statuses and set(statuses) == {200}, f"{statuses}\n{result.stderr}"
    if "turn.failed" in kinds:
        # The answer ran into the cap: Codex's own message for an incomplete response.
        failed = next(event for event in events if event.get("type") == "turn.failed")
        assert "max_output_tokens" in json.dumps(failed), events
        return
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{server.log()[-3000:]}"
    assert "turn.completed" in kinds, kinds
    messages = [
        event["item"]
        for event in events
        if event.get("type") == "item.completed"
        and event.get("item", {}).get("type") == "agent_message"
    ]
    assert messages and messages[-1]["text"].strip(), events
