"""The run owner's guarantees: a stream's run is closed even when its client is gone before
the first event (its generator never starts), and a request's usage is booked once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
from pydantic import BaseModel

from server.access import ApiKey, KeyLimits, RateLimiter, key_digest
from server.api.sse import sse_response
from server.context import RequestContext
from server.errors import RateLimitError
from server.metrics import RunRecord
from server.services.usage import Ledger


class Chunk(BaseModel):
    n: int


def test_a_stream_whose_client_left_before_it_started_is_still_closed() -> None:
    started: list[bool] = []
    closed: list[bool] = []

    async def chunks() -> AsyncGenerator[BaseModel, None]:
        started.append(True)
        yield Chunk(n=1)

    async def scenario() -> None:
        response = sse_response(chunks(), shutdown_grace=1, on_close=lambda: closed.append(True))

        async def receive() -> dict[str, str]:
            return {"type": "http.disconnect"}

        async def send(message: object) -> None:
            await asyncio.Event().wait()  # a client that never reads

        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        await asyncio.wait_for(response(scope, receive, send), timeout=10)

    asyncio.run(scenario())
    assert closed == [True]
    assert started == []  # nothing was generated for nobody


def test_a_ledger_books_a_record_once_and_only_what_the_meter_did_not_count() -> None:
    key = ApiKey("team", key_digest("k"), KeyLimits(tokens_per_minute=100))
    limiter = RateLimiter()
    context = RequestContext("req_1", api_key=key)
    ledger = Ledger(context, limiter=limiter)
    ledger.meter(30)  # prompt and tokens counted as they were used
    record = RunRecord("m", prompt_tokens=20, completion_tokens=30)
    ledger.record(record)
    ledger.record(RunRecord("m", prompt_tokens=999))  # a second close books nothing
    assert context.record is record and context.model == "m"
    ledger = Ledger(RequestContext("req_2", api_key=key), limiter=limiter)
    with pytest.raises(RateLimitError):
        ledger.check(51)  # 30 + 20 + 51 would be over 100: refused, and nothing counted
    assert ledger.meter(49)  # 30 + 20 + 49 = 99: still under 100
    assert not ledger.meter(2)  # counted, and over: the run ends there
