"""Request ids in log records, and JSON log lines."""

from __future__ import annotations

import json
import logging

from fastapi.testclient import TestClient

from server.logs import JsonFormatter, RequestIdFilter, request_id_var


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_request_log_line_carries_the_http_request_id(client: TestClient) -> None:
    capture = Capture()
    logger = logging.getLogger("hearth.requests")
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 2}
        response = client.post("/v1/completions", json=body, headers={"X-Request-Id": "log-me-1"})
    finally:
        logger.removeHandler(capture)
    assert response.headers["x-request-id"] == "log-me-1"
    (record,) = [r for r in capture.records if r.getMessage().startswith("request cmpl-")]
    assert record.request_id == "log-me-1"  # type: ignore[attr-defined]
    assert "prompt_tokens=" in record.getMessage() and "queue_wait=" in record.getMessage()


def test_json_lines_have_the_fields_and_the_request_id() -> None:
    token = request_id_var.set("req_abc")
    try:
        record = logging.LogRecord(
            "hearth.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None
        )
        RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello you" and line["level"] == "WARNING"
    assert line["request_id"] == "req_abc" and line["logger"] == "hearth.x"
