"""Running the app under uvicorn, with a shutdown that drains instead of dropping work."""

from __future__ import annotations

from types import FrameType

import uvicorn
from fastapi import FastAPI

from server.settings import Settings


class DrainingServer(uvicorn.Server):
    """On SIGTERM or SIGINT, first turn new requests away with 503 (even those arriving on
    open keep-alive connections), then let uvicorn wait up to ``shutdown_grace`` seconds for
    the running ones to finish before the app's lifespan closes the models."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        state = getattr(getattr(app, "state", None), "hearth", None)
        if state is not None:
            state.begin_shutdown()
        super().handle_exit(sig, frame)


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
    )
    return DrainingServer(config)
