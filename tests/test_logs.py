"""Request ids in log records, and JSON log lines."""

from __future__ import annotations

import json
import logging

from fastapi.testclient import TestClient

from server.logs import JsonFormatter, RequestIdFilter, key_values, request_id_var


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_one_access_line_per_request_with_its_id_and_tokens(client: TestClient) -> None:
    capture = Capture()
    logger = logging.getLogger("hearth.access")
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 2}
        response = client.post("/v1/completions", json=body, headers={"X-Request-Id": "log-me-1"})
    finally:
        logger.removeHandler(capture)
    assert response.headers["x-request-id"] == "log-me-1"
    (record,) = capture.records
    assert record.request_id == "log-me-1"  # type: ignore[attr-defined]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["path"] == "/v1/completions" and fields["status"] == 200
    assert fields["model"] == "smollm2" and fields["completion_id"].startswith("cmpl-")
    assert fields["completion_tokens"] == 2 and fields["prompt_tokens"] >= 1
    message = record.getMessage()
    assert "status=200" in message and "queue_wait=" in message and "ttft=" in message
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "log-me-1" and line["completion_tokens"] == 2


def test_requests_refused_early_are_logged_too(client: TestClient) -> None:
    capture = Capture()
    logger = logging.getLogger("hearth.access")
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    finally:
        logger.removeHandler(capture)
    (record,) = capture.records
    assert record.fields["status"] == 404  # type: ignore[attr-defined]


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


def test_key_value_lines_quote_any_value_that_could_pass_for_another_field() -> None:
    line = key_values(
        {
            "path": "/v1/x key=admin status=200",
            "status": 404,
            "key": 'say "hi"\\',
            "model": "a=b",
            "tab": "a\tb\n",
            "plain": "/v1/models",
            "none": None,
            "empty": "",
        }
    )
    assert line == (
        'path="/v1/x key=admin status=200" status=404 key="say \\"hi\\"\\\\" model="a=b" '
        'tab="a\\tb\\n" plain=/v1/models'
    )
