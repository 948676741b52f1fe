"""What a JSON-schema grammar costs per generated token, on the engine's backend directly.

Decodes the same prompt greedily for ``--tokens`` tokens three ways and prints ms per token:
without a grammar; with the grammar applied to every candidate (a grammar sampler inside the
chain, as a plain llama.cpp sampler chain does it); and as Hearth samples, checking only the
chosen token against the grammar and falling back to the full pass when it is refused. A
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.engine.grammar import json_schema_grammar
from server.engine.llama import BatchEntry, LlamaBackend
from server.engine.types import SamplingParams

PROMPT = "<|im_start|>user\nDescribe a person as JSON.<|im_end|>\n<|im_start|>assistant\n"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
}


def per_token_ms(
    backend: LlamaBackend, sampling: SamplingParams, tokens: int, in_chain: bool
) -> float:
    prompt = backend.tokenize(PROMPT, add_special=False, parse_special=True)
    backend.clear(0)
    backend.begin(0, sampling)
    if in_chain:  # move the grammar into the chain: every candidate is checked every step
        chain = backend._samplers[0]
        llama_cpp.llama_sampler_chain_add(chain, backend._grammars[0])
        # The chain ends with its selecting sampler; the grammar must come before it.
        count = llama_cpp.llama_sampler_chain_n(chain)
        selector = llama_cpp.llama_sampler_chain_remove(chain, count - 2)
        llama_cpp.llama_sampler_chain_add(chain, selector)
        backend._grammars[0] = None
    backend.decode([BatchEntry(0, t, i, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    index, position = len(prompt) - 1, len(prompt)
    started = time.perf_counter()
    for _ in range(tokens):
        token = backend.sample(0, index)
        if backend.is_end_of_generation(token):
            break
        backend.decode([BatchEntry(0, token, position, True)])
        index, position = 0, position + 1
    elapsed = time.perf_counter() - started
    backend.end(0)
    return 1000 * elapsed / max(1, position - len(prompt))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=100)
    args = parser.parse_args(argv)
    backend = LlamaBackend(args.model_path, n_ctx=512, n_slots=1, n_threads=args.threads)
    grammar = json_schema_grammar(SCHEMA)
    greedy = SamplingParams(temperature=0)
    constrained = SamplingParams(temperature=0, grammar=grammar)
    rows = [
        ("no grammar", per_token_ms(backend, greedy, args.tokens, in_chain=False)),
        (
            "grammar on every candidate",
            per_token_ms(backend, constrained, args.tokens, in_chain=True),
        ),
        (
            "grammar on the chosen token first (Hearth)",
            per_token_ms(backend, constrained, args.tokens, in_chain=False),
        ),
    ]
    print("| sampling | ms per token |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
