"""`hearth chat`: reading messages, the conversation it keeps, Ctrl-C, and the server it
starts when none answers."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.chat_cli import ChatError, ChatSession, read_message
from tests.conftest import LiveServer, free_port, model_file


def scripted(lines: list[str]) -> Iterator[str]:
    yield from lines
    raise EOFError


def prompt_from(lines: list[str]) -> tuple[list[str], Callable[[str], str]]:
    asked: list[str] = []
    feed = scripted(lines)

    def prompt(text: str) -> str:
        asked.append(text)
        return next(feed)

    return asked, prompt


def test_a_message_spans_lines_between_triple_quotes_or_after_a_backslash() -> None:
    asked, prompt = prompt_from(['"""', "first line", "", "second line", '"""'])
    assert read_message(prompt) == "first line\n\nsecond line"
    assert asked == [">>> ", "... ", "... ", "... ", "... "]
    _, prompt = prompt_from(["one \\", "two \\", "three"])
    assert read_message(prompt) == "one \ntwo \nthree"
    _, prompt = prompt_from(['"""', "typed before the input ended"])
    assert read_message(prompt) == "typed before the input ended"
    _, prompt = prompt_from([])
    with pytest.raises(EOFError):
        read_message(prompt)


def test_the_session_keeps_the_conversation_and_its_commands_change_it(
    live_server: LiveServer,
) -> None:
    session = ChatSession(live_server.base_url, "smollm2", temperature=0, max_tokens=8)
    answer = "".join(session.ask("Hello!"))
    assert answer
    assert session.messages == [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": answer},
    ]
    assert session.command("/system Answer in French.") == "(system prompt set)"
    assert session.system == "Answer in French."
    "".join(session.ask("And now?"))
    assert len(session.messages) == 4
    assert session.command("/reset") == "(the conversation is forgotten)"
    assert session.messages == [] and session.system == "Answer in French."
    assert session.command("/bye") is None
    assert "unknown command" in (session.command("/dance") or "")
    # A refused message leaves the conversation as it was.
    wrong = ChatSession(live_server.base_url, "no-such-model")
    with pytest.raises(ChatError, match="no-such-model"):
        "".join(wrong.ask("Hi"))
    assert wrong.messages == []


def read_more(process: subprocess.Popen[bytes], seen: bytearray) -> None:
    """Whatever the program printed within a second."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout.fileno()], [], [], 1)
    if ready:
        chunk = os.read(process.stdout.fileno(), 4096)
        assert chunk, seen.decode(errors="replace")  # the program ended early
        seen += chunk


def read_until(process: subprocess.Popen[bytes], done: Callable[[], bool], seen: bytearray) -> None:
    deadline = time.monotonic() + 120
    while not done():
        assert time.monotonic() < deadline, seen.decode(errors="replace")
        read_more(process, seen)


def test_ctrl_c_stops_the_answer_not_the_program(live_server: LiveServer) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "chat", "smollm2", "--url", live_server.base_url,
         "--max-tokens", "900", "--temperature", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdin is not None
    seen = bytearray()
    try:
        read_until(process, lambda: b">>> " in seen, seen)
        process.stdin.write(b"Count from 1 to 500, one number per line.\n")
        process.stdin.flush()
        before = len(seen)
        read_until(process, lambda: len(seen) > before + 40, seen)  # the answer streams
        process.send_signal(signal.SIGINT)
        read_until(process, lambda: b"(stopped)" in seen, seen)
        process.stdin.write(b"/reset\n/bye\n")
        process.stdin.flush()
        rest, _ = process.communicate(timeout=60)
        seen += rest
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # It went on after the stop: the next command was carried out.
    assert b"(the conversation is forgotten)" in seen.split(b"(stopped)")[1]


def test_with_no_server_it_serves_the_gguf_file_itself(tmp_path: Path) -> None:
    model = tmp_path / "pocket.gguf"
    shutil.copy(model_file("smollm2"), model)
    env = {
        **os.environ,
        "HEARTH_PORT": str(free_port()),  # nothing answers there
        "HEARTH_KV_CACHE_DIR": str(tmp_path / "kv"),
        "HEARTH_RESPONSES_DB": str(tmp_path / "r.db"),
        "HEARTH_CTX": "512",
        "HEARTH_SLOTS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "chat", str(model), "--max-tokens", "8"],
        input=b"Say hello.\n",
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "starting one in this process" in out
    assert "Chatting with pocket at http://127.0.0.1:" in out
    answer = out.split(">>> ", 1)[1].split(">>> ")[0]
    assert answer.strip()
