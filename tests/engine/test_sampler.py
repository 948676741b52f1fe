"""Grammar sampling: choosing among the grammar's allowed tokens from the top candidates gives
exactly what checking the whole vocabulary gives, and nothing refused is ever accepted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from server.engine.backend import BatchEntry
from server.engine.grammar import json_object_grammar, json_schema_grammar
from server.engine.llama import LlamaBackend
from server.engine.types import SamplingParams
from tests.conftest import model_file

PROMPT = "<|im_start|>user\nDescribe a city as JSON.<|im_end|>\n<|im_start|>assistant\n"
SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {"name": {"type": "string"}, "people": {"type": "integer"}},
        "required": ["name", "people"],
    },
    {"enum": [f"city number {i}" for i in range(200)]},
    {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
]


@pytest.fixture(scope="module")
def backend() -> Iterator[LlamaBackend]:
    model = LlamaBackend(model_file("smollm2"), n_ctx=512, n_slots=1, n_threads=2)
    yield model
    model.close()


def generate(backend: LlamaBackend, sampling: SamplingParams, *, prefilter: bool) -> list[int]:
    prompt = backend.tokenize(PROMPT, add_special=False, markup=True)
    backend.clear(0)
    backend.begin(0, sampling)
    if not prefilter:
        state = backend.samplers._slots[0]
        assert state is not None
        state.needed = 0
    backend.decode([BatchEntry(0, t, i, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    index, position, out = len(prompt) - 1, len(prompt), []
    for _ in range(40):
        token = backend.sample(0, index)
        if backend.is_end_of_generation(token):
            break
        out.append(token)
        backend.decode([BatchEntry(0, token, position, True)])
        index, position = 0, position + 1
    backend.end(0)
    return out


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0.9, top_k=40, seed=5),
        SamplingParams(temperature=0.9, top_k=40, seed=6, logit_bias=((90, 5.0), (28, -100.0))),
        SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, seed=7),
    ],
)
def test_the_top_candidates_choose_what_the_whole_vocabulary_would(
    backend: LlamaBackend, schema: dict[str, Any], sampling: SamplingParams
) -> None:
    grammar = json_schema_grammar(schema)
    constrained = SamplingParams(**{**sampling.__dict__, "grammar": grammar})
    before = dict(backend.samplers.passes)
    quick = generate(backend, constrained, prefilter=True)
    used_top = backend.samplers.passes["top"] - before["top"]
    whole = generate(backend, constrained, prefilter=False)
    assert quick == whole
    if sampling.temperature == 0 or sampling.top_k <= 2:
        # The grammar refused the free choice, and the top candidates held the best allowed.
        assert used_top > 0


def test_penalties_or_no_top_k_check_the_whole_vocabulary(backend: LlamaBackend) -> None:
    before = dict(backend.samplers.passes)
    generate(
        backend,
        SamplingParams(temperature=0, repeat_penalty=1.3, grammar=json_object_grammar()),
        prefilter=True,
    )
    generate(
        backend,
        SamplingParams(temperature=0.8, top_k=0, seed=1, grammar=json_object_grammar()),
        prefilter=True,
    )
    assert backend.samplers.passes["top"] == before["top"]
    assert backend.samplers.passes["full"] > before["full"]
