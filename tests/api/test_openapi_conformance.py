"""A schemathesis run against Hearth's own /openapi.json: generated requests, valid and
invalid, to the generation, embedding and token paths of a live server on the real model.

Every answer must be one the schema documents (status, content type, body), and none may be a
5xx. Generation is kept short (at most 4 tokens), and every request names the loaded model, so
that the run explores request shapes rather than waiting on long answers or 404s.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from tests.conftest import LiveServer, make_settings

PATHS = (
    r"^/(v1/(chat/completions|completions|embeddings|messages|messages/count_tokens)"
    r"|api/(chat|generate|embed|show)|tokenize|detokenize)$"
)
MAX_TOKENS = 4
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# The document the app serves at /openapi.json; building the app loads no model.
schema = schemathesis.openapi.from_dict(create_app(make_settings()).openapi()).include(
    path_regex=PATHS
)
# Valid requests and invalid ones; derandomized, so that CI sees the same cases every run.
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    deterministic=True,
)


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    if isinstance(body, dict):
        body["model"] = "smollm2"
        options = body.get("options")
        if isinstance(options, dict):  # Ollama's length
            options["num_predict"] = MAX_TOKENS
        elif ("options" not in body and "messages" in body) or "prompt" in body:
            body["options"] = {"num_predict": MAX_TOKENS}
        for field in ("max_tokens", "max_completion_tokens"):
            value = body.get(field)
            if field not in body and field != "max_tokens":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value > MAX_TOKENS:
                body[field] = MAX_TOKENS
    return body


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_none_is_a_server_error(
    case: schemathesis.Case[Any], live_server: LiveServer
) -> None:
    case.call_and_validate(base_url=live_server.base_url, checks=CHECKS, timeout=60)
