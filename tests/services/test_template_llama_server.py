"""Hearth's prompt for each real chat template beside llama.cpp's llama-server's.

Where bench/build_llama_server.sh has built llama-server (`make bench` does it), each template
of the corpus (tests/services/test_template_corpus.py) is served by one llama-server with
SmolLM2 and ``--chat-template-file``, asked for the tool conversation through
``POST /apply-template``, and rendered by ChatTemplate with SmolLM2's special tokens. The two
prompts must be equal, or both servers must refuse, unless DIFFERENCES below explains why not.
``bench/template_compare.py`` prints the same comparison as a table.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.errors import ChatTemplateError
from server.services.templates import ChatTemplate
from tests.conftest import free_port, model_file
from tests.services.test_template_corpus import (
    NAMES,
    TOOLS,
    conversation,
    corpus,
    corpus_dir,
    extra_variables,
)

LLAMA_SERVER_ENV = "HEARTH_LLAMA_SERVER"


def llama_server_binary() -> Path:
    """HEARTH_LLAMA_SERVER, or where bench/build_llama_server.sh caches its build."""
    configured = os.environ.get(LLAMA_SERVER_ENV)
    if configured:
        return Path(configured).expanduser()
    cache = Path(os.environ.get("HEARTH_BENCH_CACHE", Path.home() / ".cache/hearth/bench"))
    version = importlib.metadata.version("llama-cpp-python")
    return cache / f"llama-server-{version}-noamx" / "build" / "bin" / "llama-server"


def wire_conversation() -> list[dict[str, Any]]:
    """The corpus conversation as an OpenAI client sends it (what llama-server parses):
    arguments as JSON text, no content beside a tool call."""
    messages = conversation()
    call = messages[2]["tool_calls"][0]
    call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    messages[2]["content"] = None
    return messages


@dataclass
class Rendering:
    """A prompt, or the error that stood in its place."""

    prompt: str | None
    error: str = ""


@dataclass
class Comparison:
    """One template's prompts from both servers."""

    name: str
    hearth: Rendering
    llama_server: Rendering
    # Hearth's prompt with the variables of the template's recorded difference (DIFFERENCES).
    explained: Rendering | None = None

    @property
    def outcome(self) -> str:
        """same, both refuse, differ, Hearth refuses or llama-server refuses."""
        hearth, peer = self.hearth.prompt, self.llama_server.prompt
        if hearth is None or peer is None:
            if hearth is None and peer is None:
                return "both refuse"
            return "Hearth refuses" if hearth is None else "llama-server refuses"
        return "same" if hearth == peer else "differ"

    def first_difference(self, width: int = 60) -> str:
        """Both prompts around the first character where they part."""
        a, b = self.hearth.prompt or "", self.llama_server.prompt or ""
        at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        at = min(len(a), len(b)) if at is None else at
        start = max(at - width // 3, 0)
        return f"at {at}: Hearth {a[start : start + width]!r} / llama-server {b[start : start + width]!r}"


@contextmanager
def llama_server(binary: Path, model: Path, template: Path) -> Iterator[str | Rendering]:
    """A llama-server with ``template`` on a free port: its URL, or (when it does not start,
    as for a template it cannot parse) a Rendering with its last words."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        command = [str(binary), "-m", str(model), "--jinja", "--chat-template-file", str(template)]
        command += ["-c", "512", "-np", "1", "-t", "1", "--no-warmup", "--no-webui"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            if process.poll() is not None or time.monotonic() >= deadline:
                log.seek(0)
                lines = log.read().decode(errors="replace").strip().splitlines()
                yield Rendering(None, "did not start: " + " | ".join(lines[-3:]))
            else:
                yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def compare(binary: Path, model: Path, name: str) -> Comparison:
    """Hearth's and llama-server's prompt for the corpus conversation under template ``name``."""
    path = corpus_dir() / f"{name}.jinja"
    extra = extra_variables(name)
    source = path.read_text(encoding="utf-8")
    with llama_server(binary, model, path) as server:
        if isinstance(server, Rendering):
            return Comparison(name, hearth_rendering(source, {}, extra), server)
        props = httpx.get(f"{server}/props", timeout=10).json()
        body = {"messages": wire_conversation(), "tools": TOOLS, "chat_template_kwargs": extra}
        response = httpx.post(f"{server}/apply-template", json=body, timeout=60)
    if response.status_code == 200:
        peer = Rendering(response.json()["prompt"])
    else:
        peer = Rendering(None, str(response.json().get("error", {}).get("message", response.text)))
    tokens = {"bos_token": props["bos_token"], "eos_token": props["eos_token"]}
    comparison = Comparison(name, hearth_rendering(source, tokens, extra), peer)
    if name in DIFFERENCES and DIFFERENCES[name].variables:
        more = {**extra, **DIFFERENCES[name].variables}
        comparison.explained = hearth_rendering(source, tokens, more)
    return comparison


def hearth_rendering(source: str, tokens: dict[str, str], extra: dict[str, Any]) -> Rendering:
    try:
        template = ChatTemplate(
            source, bos_token=tokens.get("bos_token", ""), eos_token=tokens.get("eos_token", "")
        )
        return Rendering(template.render(conversation(), tools=TOOLS, extra=extra))
    except ChatTemplateError as exc:
        return Rendering(None, exc.message)


@dataclass(frozen=True)
class Difference:
    """A difference Hearth keeps: the outcome, why, and (where a variable llama-server sets
    and Hearth does not makes all the difference) the variables that, given to Hearth too,
    make its prompt llama-server's, which the test checks."""

    outcome: str
    why: str
    variables: dict[str, Any] = field(default_factory=dict)


THINKING = Difference(
    "differ",
    "llama-server sets `enable_thinking` true unless told otherwise; Hearth leaves it to the "
    "request's chat_template_kwargs, so the template's own default (mostly no thinking) holds",
    {"enable_thinking": True},
)
TODAY = Difference(
    "differ",
    "llama-server sets `date_string` to today; Hearth, as transformers, leaves it undefined, so "
    "the template writes its own default date (26 Jul 2024)",
    {"date_string": time.strftime("%d %b %Y")},
)
DIFFERENCES: dict[str, Difference] = {
    **dict.fromkeys(
        ("meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.3-70B-Instruct"), TODAY
    ),
    **dict.fromkeys(
        (
            "Bielik-11B-v3.0-Instruct",
            "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
            "Qwen-QwQ-32B",
            "Reka-Edge",
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
            "deepseek-ai-DeepSeek-V3.1",
            "deepseek-ai-DeepSeek-V3.2",
            "deepseek-ai-DeepSeek-V4",
            "deepseek-ai-DeepSeek-V4-Flash-0731",
            "google-gemma-4-31B-it",
            "llama-cpp-rwkv-world",
            "openbmb-MiniCPM5-1B",
            "poolside-Laguna-XS-2.1",
            "poolside-Laguna-XS.2",
        ),
        THINKING,
    ),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": Difference(
        "differ",
        "the template writes a turn's calls only when its content is null; Hearth passes null "
        'there (as OpenAI clients send it) where "" would leave them out, llama-server '
        'passes "" and the call is missing from its prompt',
    ),
    "google-gemma-4-31B-it-interleaved": Difference(
        "differ",
        "llama-server rewrites the tool results of this older Gemma 4 template into the "
        "assistant turn's `tool_responses` (its convert_tool_responses_gemma4 workaround); "
        "Hearth passes them as `tool` messages, which the template writes as a tool turn. "
        "llama-server also sets `enable_thinking` (see the others)",
    ),
}


def unexpected(comparison: Comparison) -> str:
    """Why ``comparison`` is not as DIFFERENCES records it (or the same, or both refusing
    where nothing is recorded); '' when it is."""
    difference = DIFFERENCES.get(comparison.name)
    outcome = comparison.outcome
    if difference is None:
        if outcome in ("same", "both refuse"):
            return ""
        return (
            f"{outcome}: {comparison.first_difference()} (Hearth: {comparison.hearth.error}; "
            f"llama-server: {comparison.llama_server.error})"
        )
    if outcome != difference.outcome:
        return f"{outcome}, recorded as {difference.outcome}: {comparison.first_difference()}"
    explained = comparison.explained
    if explained is not None and explained.prompt != comparison.llama_server.prompt:
        return f"still differs with {difference.variables}: {explained.error}"
    return ""


@pytest.fixture(scope="module")
def llama_server_and_model() -> tuple[Path, Path]:
    binary = llama_server_binary()
    if not binary.is_file():
        pytest.skip(
            f"no llama-server at {binary}: build it with bench/build_llama_server.sh "
            f"(make bench does), or point {LLAMA_SERVER_ENV} at one"
        )
    return binary, model_file("smollm2")


@pytest.mark.parametrize("name", NAMES)
def test_hearth_renders_as_llama_server_does(
    name: str, llama_server_and_model: tuple[Path, Path]
) -> None:
    comparison = compare(*llama_server_and_model, name)
    assert not unexpected(comparison)


def test_the_differences_name_only_templates_of_the_corpus() -> None:
    assert set(DIFFERENCES) <= set(corpus())
