"""Every lazy-grammar trigger a chat format makes survives a long output in llama.cpp.

llama.cpp matches the trigger against all the output so far after every token, with
std::regex, which recurses once per character an unbounded quantifier takes: the first
Llama-3 trigger (``^\\s*(...)[\\s\\S]*$``) segfaulted the process after 20,000 tokens of
newlines. Each check runs in a child process, so that a crash fails the test instead of
ending the run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.engine.grammar import FunctionSpec
from server.services.formats.calls import layout_grammar
from tests.conftest import model_file
from tests.services.test_formats import LEARNED, layout
from tests.services.test_template_corpus import MISSING, corpus

# Feeds the sampler a grammar's trigger and tokens without decoding anything: argv holds
# the model, the grammar, the trigger, the text of the token to repeat, how many times, and
# the text that should then start a call (or "").
CHILD = r"""
import ctypes, sys
import llama_cpp
path, gbnf, trigger, piece, count, opener = sys.argv[1:7]
llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
patterns = (ctypes.c_char_p * 1)(trigger.encode())
sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
    vocab, gbnf.encode(), b"root", patterns, 1, None, 0)
tokens = llm.tokenize(piece.encode(), add_bos=False, special=False)
for _ in range(int(count)):
    for token in tokens:
        llama_cpp.llama_sampler_accept(sampler, token)
if opener:
    for token in llm.tokenize(opener.encode(), add_bos=False, special=False):
        llama_cpp.llama_sampler_accept(sampler, token)
    # Triggered: a token the call cannot continue with is now refused.
    bad = llm.tokenize(b"zzzz", add_bos=False, special=False)[0]
    data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(bad, 1.0, 0.0))
    array = llama_cpp.llama_token_data_array(data, 1, -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    print("refused" if data[0].logit == float("-inf") else "allowed")
print("survived")
"""
FUNCTIONS = [FunctionSpec("get_weather", {"type": "object"})]
# One template of each trigger form: at the start (JSON-looking opener, bare name), a marker.
FORMS = ["meta-llama-Llama-3.1-8B-Instruct", "meetkai-functionary-medium-v3.2",
         "Qwen-Qwen2.5-7B-Instruct", "mistralai-Mistral-Nemo-Instruct-2407"]  # fmt: skip


def run_child(name: str, piece: str, count: int, opener: str = "") -> str:
    grammar = layout_grammar(layout(name), FUNCTIONS, "auto", parallel=True)
    (trigger,) = grammar.triggers
    args = [str(model_file("smollm2")), grammar.gbnf, trigger, piece, str(count), opener]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{name}: the sampler died ({done.returncode}) on {trigger!r}"
    return done.stdout


@pytest.mark.skipif(not set(FORMS) <= set(corpus()), reason=MISSING)
@pytest.mark.parametrize("name", FORMS)
def test_a_trigger_survives_forty_thousand_characters_of_whitespace(name: str) -> None:
    assert name in LEARNED
    assert "survived" in run_child(name, "\n\n", 20_000)


@pytest.mark.skipif(not set(FORMS) <= set(corpus()), reason=MISSING)
def test_a_start_anchored_trigger_still_starts_the_call_at_the_start() -> None:
    out = run_child("meta-llama-Llama-3.1-8B-Instruct", "\n", 2, opener='{"name": "')
    assert "refused" in out
    # Text first: a call can no longer open, and nothing is refused.
    out = run_child("meta-llama-Llama-3.1-8B-Instruct", "Hello", 2, opener='{"name": "')
    assert "allowed" in out
