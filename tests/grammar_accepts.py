"""Whether llama.cpp's own grammar sampler lets a model write a text: the check of the
grammars Hearth writes, token by token on SmolLM2's vocabulary, without decoding."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest

from tests.conftest import model_file

Vocab = tuple[llama_cpp.Llama, Any]


@pytest.fixture(scope="module")
def vocab() -> Iterator[Vocab]:
    llm = llama_cpp.Llama(str(model_file("smollm2")), vocab_only=True, verbose=False)
    yield llm, llama_cpp.llama_model_get_vocab(llm._model.model)
    llm.close()


def accepts(vocab: Vocab, gbnf: str, text: str) -> bool:
    """Whether the grammar lets the model write ``text`` (as SmolLM2 tokenizes it) and stop."""
    llm, handle = vocab
    sampler = llama_cpp.llama_sampler_init_grammar(handle, gbnf.encode(), b"root")
    assert sampler, "llama.cpp refused the grammar"
    try:
        tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
        for token in [*tokens, llm.token_eos()]:
            data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 1.0, 0.0))
            array = llama_cpp.llama_token_data_array(data, 1, -1, False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            if data[0].logit == float("-inf"):
                return False
            if token != llm.token_eos():
                llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)
