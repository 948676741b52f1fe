"""What a JSON-schema grammar costs per generated token, on the engine's backend directly.

Decodes one prompt for ``--tokens`` tokens and prints, per token, the mean and the worst
sampling time (the worst is how long one step can hold up every other sequence on the engine
thread). Rows: no grammar; a small object schema with the grammar applied to every candidate
(a grammar sampler inside the chain, as a plain llama.cpp sampler chain does it); the same as
Hearth samples it (the chain's choice checked first, then the top 512 candidates, then all);
and the largest grammars the schema bounds admit (an enum of 256 strings, an anyOf of 256
objects), greedy and sampled with top_k 40 (which needs the whole vocabulary when the choice
is refused). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import time
from pathlib import Path
from typing import Any

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import append_results
from server.engine.backend import BatchEntry
from server.engine.grammar import json_schema_grammar
from server.engine.llama import LlamaBackend
from server.engine.types import SamplingParams

PROMPT = "<|im_start|>user\nDescribe a person as JSON.<|im_end|>\n<|im_start|>assistant\n"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
}


def _words(count: int) -> list[str]:
    rng = random.Random(0)
    return ["".join(rng.choices(string.ascii_lowercase, k=12)) for _ in range(count)]


ENUM_256: dict[str, Any] = {"enum": _words(256)}
ANY_OF_256: dict[str, Any] = {
    "anyOf": [
        {"type": "object", "properties": {word: {"type": "string"}}, "required": [word]}
        for word in _words(256)
    ]
}


def per_token_ms(
    backend: LlamaBackend, sampling: SamplingParams, tokens: int, in_chain: bool = False
) -> tuple[float, float]:
    """Mean and worst milliseconds of sampling one token (decoding not included)."""
    prompt = backend.tokenize(PROMPT, add_special=False, markup=True)
    backend.clear(0)
    backend.begin(0, sampling)
    if in_chain:  # the grammar inside the chain: every candidate is checked every step
        state = backend.samplers._slots[0]
        assert state is not None and state.grammar is not None
        llama_cpp.llama_sampler_chain_add(state.chain, state.grammar)
        # The chain ends with its selecting sampler; the grammar must come before it.
        count = llama_cpp.llama_sampler_chain_n(state.chain)
        selector = llama_cpp.llama_sampler_chain_remove(state.chain, count - 2)
        llama_cpp.llama_sampler_chain_add(state.chain, selector)
        state.grammar = None
    backend.decode([BatchEntry(0, t, i, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    index, position, times = len(prompt) - 1, len(prompt), []
    for _ in range(tokens):
        started = time.perf_counter()
        token = backend.sample(0, index)
        times.append(time.perf_counter() - started)
        if backend.is_end_of_generation(token):
            break
        backend.decode([BatchEntry(0, token, position, True)])
        index, position = 0, position + 1
    backend.end(0)
    return 1000 * sum(times) / len(times), 1000 * max(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--write", type=Path, help="append the table to this RESULTS.md")
    args = parser.parse_args(argv)
    backend = LlamaBackend(args.model_path, n_ctx=1024, n_slots=1, n_threads=args.threads)
    greedy = SamplingParams(temperature=0)
    sampled = SamplingParams(temperature=0.8, top_k=40, seed=1)

    def with_grammar(params: SamplingParams, schema: dict[str, Any]) -> SamplingParams:
        return SamplingParams(**{**params.__dict__, "grammar": json_schema_grammar(schema)})

    rows = [
        ("no grammar", per_token_ms(backend, greedy, args.tokens)),
        (
            "object, grammar on every candidate",
            per_token_ms(backend, with_grammar(greedy, SCHEMA), args.tokens, in_chain=True),
        ),
        (
            "object, Hearth, greedy",
            per_token_ms(backend, with_grammar(greedy, SCHEMA), args.tokens),
        ),
        (
            "object, Hearth, top_k 40",
            per_token_ms(backend, with_grammar(sampled, SCHEMA), args.tokens),
        ),
        ("enum of 256, greedy", per_token_ms(backend, with_grammar(greedy, ENUM_256), args.tokens)),
        (
            "enum of 256, top_k 40",
            per_token_ms(backend, with_grammar(sampled, ENUM_256), args.tokens),
        ),
        (
            "anyOf of 256, greedy",
            per_token_ms(backend, with_grammar(greedy, ANY_OF_256), args.tokens),
        ),
        (
            "anyOf of 256, top_k 40",
            per_token_ms(backend, with_grammar(sampled, ANY_OF_256), args.tokens),
        ),
    ]
    table = "| grammar and sampling | mean ms per token | worst ms |\n|---|---|---|\n"
    table += "\n".join(f"| {name} | {mean:.2f} | {worst:.1f} |" for name, (mean, worst) in rows)
    table += f"\n\nHow grammar choices were made: {backend.samplers.passes}"
    print(table)
    backend.close()
    if args.write is not None:
        append_results(
            args.write,
            "grammar cost per token, up to the largest grammars the bounds admit (engine only)",
            args.threads,
            "bench/grammar_cost.py",
            argv,
            table,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
