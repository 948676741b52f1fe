"""Running the app under uvicorn: a bounded, guarded connection layer, and a shutdown that
drains instead of dropping work."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.api.limits import UPLOAD_PREFIX
from server.settings import Settings

logger = logging.getLogger(__name__)


class GuardedProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with the bounds it lacks.

    - **A header deadline.** uvicorn arms no timer until a first response is sent, and
      cancels its keep-alive timer on any byte received, so a client that opens a connection
      and sends its headers a byte at a time (or never) holds it forever; 200 such
      connections stayed open. Here a request's headers must be complete within
      ``header_timeout`` seconds of the connection opening, or of the previous response
      ending on a kept-alive connection; otherwise the connection is closed.
    - **A body deadline.** The same holds for a body: once its headers are complete, a
      request's body must be complete within ``body_timeout`` seconds, or the connection is
      closed (time the server itself stops reading, its buffer full, is not the client's).
      A client announcing a large body and sending it a byte every two seconds held its
      connection forever, with a key or without one: uvicorn goes on reading (and dropping)
      a body the app answered without reading it, a 401 or a 413, for as long as the client
      sends it. Such a body keeps its deadline; the connection is not closed at once, which
      would make the client's kernel answer its unsent body with a reset and could lose the
      answer.
    - **A connection limit.** Beyond ``max_connections`` open connections, a new one is
      closed as soon as it is accepted.
    """

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            logger.warning("refusing a connection: %d are open", len(self.connections))
            transport.abort()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._body_timer is not None and self._uploading():
            # A model's blob takes longer than any deadline for a whole body: its deadline
            # is for a pause (no byte for body_timeout seconds).
            self._disarm_body_timer()
        self._follow_request()

    def _uploading(self) -> bool:
        """A model's blob being read by the app: not one it has already answered (a 401,
        a 413), which a client could otherwise trickle forever."""
        scope = getattr(self, "scope", None)
        cycle = getattr(self, "cycle", None)
        return (
            isinstance(scope, dict)
            and scope.get("method") == "POST"
            and str(scope.get("path", "")).startswith(UPLOAD_PREFIX)
            and cycle is not None
            and not cycle.response_started
        )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the next request on this connection
        self._follow_request()  # or a pipelined one, already begun

    def _follow_request(self) -> None:
        """Run the deadline for what the client owes: from the end of a request's headers,
        its body's; once the body is in, none until the answer is sent."""
        their_state = self.conn.their_state
        if their_state is h11.SEND_BODY:
            self._disarm_header_timer()
            if self._body_timer is None:  # one deadline for the whole body
                self._body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)
        elif their_state is h11.IDLE:
            if self._body_timer is not None:  # a body dropped after its answer has ended
                self._disarm_body_timer()
                self._arm_header_timer()  # and the next request's headers are due
        else:
            self._disarm_header_timer()
            self._disarm_body_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._disarm_body_timer()
        if self.transport is not None:  # not a connection refused at once
            super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app has not taken what came: the wait is ours
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)
            return
        self.transport.close()


def guarded_protocol(settings: Settings) -> type[GuardedProtocol]:
    """The protocol class with this server's bounds."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {
            "header_timeout": settings.header_timeout,
            "body_timeout": settings.body_timeout,
            "max_connections": settings.max_connections,
        },
    )


class DrainingServer(uvicorn.Server):
    """On SIGTERM or SIGINT, first turn new requests away with 503 (even those arriving on
    open keep-alive connections), then let uvicorn wait up to ``shutdown_grace`` seconds for
    the running ones to finish before the app's lifespan closes the models.

    A generation that would outlast the grace period is stopped shortly before it ends, so
    that its stream closes with an error event and ``[DONE]`` (and a whole answer gets a
    503) instead of being cut off mid-stream when uvicorn gives up."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        state = getattr(getattr(app, "state", None), "hearth", None)
        if state is not None and not self._draining:
            self._draining = True
            state.begin_shutdown()
            if self._loop is not None:
                grace = float(self.config.timeout_graceful_shutdown or 0)
                stop_at = max(0.0, grace - min(_FAREWELL_SECONDS, grace / 2))
                self._loop.call_soon_threadsafe(
                    self._loop.call_later, stop_at, state.stop_running_generations
                )
        super().handle_exit(sig, frame)


# Time left, before the grace period ends, for stopped streams to send their last events.
_FAREWELL_SECONDS = 2.0


def listening_sockets(server: uvicorn.Server, settings: Settings) -> list[socket.socket] | None:
    """The sockets to serve on when ``ollama_port`` is set (the same app on both ports);
    None lets uvicorn bind ``port`` alone."""
    if settings.ollama_port is None:
        return None
    config = server.config
    second = uvicorn.Config(config.app, host=config.host, port=settings.ollama_port)
    return [config.bind_socket(), second.bind_socket()]


def build_server(app: FastAPI, settings: Settings, *, port: int | None = None) -> DrainingServer:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        log_level=settings.log_level,
        # uvicorn's loggers go through the root handler that `hearth serve` set up, so its
        # lines are JSON too when log_format is json.
        log_config=None,
        access_log=False,  # the gateway logs each request, with its id and tokens
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        http=guarded_protocol(settings),
    )
    return DrainingServer(config)
