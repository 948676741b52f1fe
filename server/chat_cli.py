"""``hearth chat``: a terminal chat with a model, against a running server or one started here.

Answers stream as they are generated. Ctrl-C stops the answer being written (what came so far
stays in the conversation), not the program; Ctrl-D or ``/bye`` leaves. A message may span
lines: end a line with ``\\`` to go on, or put it between two lines of ``\"\"\"``. Commands:
``/reset`` forgets the conversation, ``/system TEXT`` sets the system prompt (``/system`` alone
clears it), ``/help`` lists them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

from server.settings import Settings

HELP = """Commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt; /system alone clears it
  /bye            leave (or Ctrl-D)
A message may span lines: end a line with \\ to go on, or write it between two lines of \"\"\".
Ctrl-C stops an answer; the conversation keeps what was written."""


class ChatError(Exception):
    """The server refused a message or could not be reached."""


@dataclass
class ChatSession:
    """One conversation with ``model`` at ``url``."""

    url: str
    model: str
    key: str | None = None
    system: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def command(self, text: str) -> str | None:
        """Carry out a ``/command``; returns what to tell the user, or None to leave."""
        name, _, rest = text.partition(" ")
        if name in ("/bye", "/exit", "/quit"):
            return None
        if name == "/reset":
            self.messages.clear()
            return "(the conversation is forgotten)"
        if name == "/system":
            self.system = rest.strip()
            return "(system prompt set)" if self.system else "(system prompt cleared)"
        if name in ("/help", "/?"):
            return HELP
        return f"unknown command {name}: /help lists them"

    def ask(self, text: str) -> Iterator[str]:
        """Send ``text`` and yield the answer as it streams. The user's message and what was
        answered (all of it, or as much as came before the caller stopped reading) join the
        conversation."""
        self.messages.append({"role": "user", "content": text})
        answer: list[str] = []
        try:
            yield from self._stream(answer)
        finally:
            if answer:
                self.messages.append({"role": "assistant", "content": "".join(answer)})
            else:  # nothing came back: the question did not happen
                self.messages.pop()

    def _stream(self, answer: list[str]) -> Iterator[str]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        body: dict[str, Any] = {
            "model": self.model,
            "messages": system + self.messages,
            "stream": True,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(600, connect=10)) as client,
                client.stream(
                    "POST", self.url + "/v1/chat/completions", json=body, headers=headers
                ) as response,
            ):
                if response.status_code != 200:
                    response.read()
                    raise ChatError(_error_message(response))
                for line in response.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    try:
                        chunk = json.loads(line[5:])
                    except ValueError as exc:
                        raise ChatError(f"the server sent something unreadable: {exc}") from exc
                    if "error" in chunk:
                        error = chunk["error"]
                        message = error.get("message") if isinstance(error, dict) else error
                        raise ChatError(str(message or "the server failed"))
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            answer.append(piece)
                            yield piece
        except httpx.HTTPError as exc:
            raise ChatError(f"cannot reach {self.url}: {exc}") from exc


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return f"{response.status_code} {response.reason_phrase}"
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or response.status_code)


def read_message(prompt: Callable[[str], str]) -> str:
    """One message from the user, over several lines if it says so. Raises EOFError at the
    end of input and KeyboardInterrupt on Ctrl-C."""
    line = prompt(">>> ")
    if line.strip() == '"""':
        lines: list[str] = []
        try:
            while (line := prompt("... ")).strip() != '"""':
                lines.append(line)
        except EOFError:  # input ended inside the block: what was typed is the message
            if not lines:
                raise
        return "\n".join(lines)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = prompt("... ")
    lines.append(line)
    return "\n".join(lines)


def chat_loop(session: ChatSession, prompt: Callable[[str], str], out: TextIO) -> int:
    """Read messages and print answers until the user leaves."""
    out.write(f"Chatting with {session.model} at {session.url}. /help for commands.\n")
    while True:
        try:
            text = read_message(prompt).strip()
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n(Ctrl-D or /bye leaves)\n")
            continue
        if not text:
            continue
        if text.startswith("/"):
            said = session.command(text)
            if said is None:
                return 0
            out.write(said + "\n")
            continue
        try:
            for piece in session.ask(text):
                out.write(piece)
                out.flush()
            out.write("\n")
        except KeyboardInterrupt:
            out.write("\n(stopped)\n")
        except ChatError as exc:
            out.write(f"\nerror: {exc}\n")
        out.flush()


def answering(url: str) -> bool:
    """Whether a server answers its liveness probe at ``url``."""
    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def pick_model(url: str, key: str | None, wanted: str | None) -> str:
    """``wanted``, or the server's first loaded model (else its first)."""
    if wanted:
        return wanted
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(url + "/v1/models", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise ChatError(f"cannot reach {url}: {exc}") from exc
    if response.status_code != 200:
        raise ChatError(_error_message(response))
    cards = response.json()["data"]
    if not cards:
        raise ChatError(f"{url} serves no model")
    loaded = [c["id"] for c in cards if c.get("loaded")]
    return str(loaded[0] if loaded else cards[0]["id"])


class LocalServer:
    """A Hearth server in this process, on a free loopback port, for as long as the chat."""

    def __init__(self, settings: Settings) -> None:
        import socket

        from server.app import create_app
        from server.http_server import build_server, listening_sockets

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        # Only this loopback port: not the configured one, nor an Ollama-compatible one.
        settings = settings.model_copy(
            update={"host": "127.0.0.1", "port": port, "ollama_port": None, "log_level": "warning"}
        )
        self.url = f"http://127.0.0.1:{port}"
        self._server = build_server(create_app(settings), settings, port=port)
        sockets = listening_sockets(self._server, settings)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, daemon=True
        )

    def __enter__(self) -> LocalServer:
        self._thread.start()
        deadline = time.monotonic() + 300
        while not answering(self.url):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ChatError("the local server did not start")
            time.sleep(0.1)
        while True:
            try:
                ready = httpx.get(self.url + "/ready", timeout=5)
            except httpx.HTTPError as exc:
                raise ChatError(f"the local server stopped: {exc}") from exc
            if ready.status_code == 200:
                return self
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ChatError(f"the local server is not ready: {_error_message(ready)}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)
