"""The network edge: slow or idle connections, foreign Host headers, forged log lines, and a
stream that outlasts the shutdown grace period."""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.hostile.conftest import CHAT, ServerProcess, smollm2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("edge"),
        {"max_queue": 16, "header_timeout": 2, "max_connections": 40, "shutdown_grace": 4},
        [smollm2()],
    )
    try:
        yield process.start()
    finally:
        process.stop()


def open_idle(port: int, partial: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if partial:
        sock.sendall(partial)
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_that_never_finish_their_headers_are_closed(server: ServerProcess) -> None:
    # 200 connections: some send nothing, some half a request line, some a header a byte at a
    # time. They used to stay open for good.
    partials = [b"", b"GET /v1/models HTTP/1.1\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nHo"]
    sockets = [open_idle(server.port, partials[i % 3]) for i in range(200)]
    try:
        # Beyond max_connections (40) a connection is closed as soon as it is accepted.
        early = sum(closed_by_server(s, 0.5) for s in sockets[100:])
        assert early >= 90, early
        # A client trickling bytes does not keep its connection past the header deadline.
        trickler = open_idle(server.port, b"G")
        sockets.append(trickler)
        for char in b"ET /health HTTP/1.1\r\n":
            time.sleep(0.1)
            try:
                trickler.send(bytes([char]))
            except OSError:
                break
        time.sleep(2)
        assert all(closed_by_server(s, 5) for s in [*sockets[:100], trickler])
    finally:
        for sock in sockets:
            sock.close()
    server.assert_recovered()


def send_headers(port: int, key: str | None) -> socket.socket:
    """A chat request's headers, announcing a 100,000-byte body, and the body's first byte."""
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Content-Length: 100000",
        *([f"Authorization: Bearer {key}"] if key else []),
    ]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n{").encode())
    return sock


def test_a_body_sent_a_byte_at_a_time_does_not_hold_its_connection(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = {"api_keys": ["sk-edge"], "max_connections": 40, "body_timeout": 3}
    process = ServerProcess(tmp_path_factory.mktemp("bodies"), settings, [smollm2()])
    process.headers = {"Authorization": "Bearer sk-edge"}
    process.start()
    # Every connection the server takes: half with no key, half with one, each sending its
    # body a byte every half second. They used to hold every connection for good.
    anonymous = [send_headers(process.port, None) for _ in range(20)]
    keyed = [send_headers(process.port, "sk-edge") for _ in range(20)]
    received = {sock: b"" for sock in anonymous + keyed}
    closed: list[socket.socket] = []  # in the order the server closed them
    try:
        deadline = time.monotonic() + 30
        while len(closed) < len(received) and time.monotonic() < deadline:
            open_ = [sock for sock in received if sock not in closed]
            for sock in select.select(open_, [], [], 0.5)[0]:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                received[sock] += data
                if not data:
                    closed.append(sock)
            for sock in open_:
                if sock not in closed:
                    with contextlib.suppress(OSError):  # closed: the next recv says so
                        sock.send(b" ")
        # Every one closed once its body took longer than body_timeout.
        assert len(closed) == len(received)
        # Without a key: 401 at once, with the body not read (nor sent).
        assert all(received[sock].startswith(b"HTTP/1.1 401 ") for sock in anonymous)
        assert not any(received[sock] for sock in keyed)
    finally:
        for sock in received:
            sock.close()
        try:
            process.assert_recovered()
        finally:
            process.stop()


def test_a_foreign_host_header_is_refused_on_loopback(server: ServerProcess) -> None:
    # A page on evil.example that rebinds its name to 127.0.0.1 still sends Host: evil.example.
    with server.client() as http:
        foreign = http.get("/v1/models", headers={"Host": "evil.example"})
        assert foreign.status_code == 400
        assert foreign.json()["error"]["code"] == "host_not_allowed"
        chat = http.post(
            CHAT, json={"model": "smollm2", "messages": []}, headers={"Host": "evil.example:8000"}
        )
        assert chat.status_code == 400
        for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]"):
            assert http.get("/v1/models", headers={"Host": host}).status_code == 200
    server.assert_recovered()


def test_control_characters_in_a_path_cannot_forge_a_log_line(server: ServerProcess) -> None:
    with server.client() as http:
        http.get("/x%0AFORGED-LINE%20status=200")
        http.get("/y%1B%5B31mred")
    server.assert_recovered()
    lines = server.log().splitlines()
    assert not any(line.startswith("FORGED-LINE") for line in lines)
    assert any("/x\\nFORGED-LINE" in line for line in lines)
    assert not any("\x1b" in line for line in lines)
    assert any("/y\\x1b[31mred" in line for line in lines)


# A field of a text access line: name=value, the value bare or quoted (with escapes inside).
ACCESS_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def test_spaces_and_quotes_in_a_path_cannot_forge_an_access_log_field(
    server: ServerProcess,
) -> None:
    with server.client() as http:
        http.get("/v1/x%20key=admin%20status=200")
        http.get("/v1/y%22%20status=201%20z=%22")  # a quote to end a quoted value early
    server.assert_recovered()
    access = [line for line in server.log().splitlines() if " hearth.access " in line]
    for forged, path in (
        ("key=admin", '"/v1/x key=admin status=200"'),
        ("status=201", '"/v1/y\\" status=201 z=\\""'),
    ):
        line = next(line for line in access if forged in line)
        fields = ACCESS_FIELD.findall(line.split("]: ", 1)[1])
        names = [name for name, _ in fields]
        assert names.count("status") == 1 and "key" not in names and "z" not in names, line
        assert dict(fields)["path"] == path and dict(fields)["status"] == "404", line


def test_a_stream_that_outlasts_the_grace_period_ends_with_an_error_event(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    process = ServerProcess(
        tmp_path_factory.mktemp("grace"), {"shutdown_grace": 3}, [smollm2()]
    ).start()
    body = {
        "model": "smollm2",
        "prompt": "1, 2, 3,",
        "max_tokens": 900,
        "logit_bias": {"0": -100, "2": -100},
        "stream": True,
    }
    events: list[str] = []
    try:
        with (
            httpx.Client(base_url=process.base_url, timeout=60) as http,
            http.stream("POST", "/v1/completions", json=body) as stream,
        ):
            lines = stream.iter_lines()
            events.append(next(line for line in lines if line.startswith("data:")))
            assert process.process is not None
            process.process.terminate()  # SIGTERM
            events += [line for line in lines if line.startswith("data:")]
    finally:
        process.stop()
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][5:])
    assert last["error"]["code"] == "shutting_down"
    assert 5 < len(events) < 800  # it ran for a while, and was stopped before its end
