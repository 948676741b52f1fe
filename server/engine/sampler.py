"""Choosing each sequence's next token: a llama.cpp sampler chain per slot, and its grammar.

A grammar checks a candidate token by matching its text against every alternative open at
the current position, on the engine thread that decodes for everyone: over SmolLM2's 49,152
tokens a full pass cost 7 ms for a plain object and 139 ms for an enum of 256 strings. So:

1. The chain chooses without the grammar, and the grammar checks only that one token; it is
   usually allowed. (llama.cpp's own server does the same.)
2. When it is refused, the grammar checks the 512 candidates with the highest logits (after
   ``logit_bias``), and the chain chooses among those it allows. That is exactly the choice
   the whole vocabulary would give whenever enough of them pass: the top-k tokens the
   grammar allows are then all inside the 512. It applies only when nothing after the bias
   can reorder candidates (no repetition penalties) and the chain keeps at most 512 (greedy,
   or ``top_k`` up to 512).
3. Otherwise, or when too few pass, the grammar checks every candidate.

A token reaches ``llama_sampler_accept`` only once the grammar has allowed it: accepting a
refused token throws inside llama.cpp, which aborts the process. When the grammar leaves
nothing ``logit_bias`` has not banned, :class:`SamplingDeadEnd` ends the sequence instead.
"""

from __future__ import annotations

import ctypes
from typing import Any, cast

import llama_cpp
import numpy as np

from server.engine.types import Grammar, SamplingDeadEnd, SamplingParams

# Candidates the grammar checks first when the chain's own choice is refused.
PREFILTER = 512
_CANDIDATE = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class _Slot:
    """One sequence's samplers, and what the grammar fallback needs to know of them."""

    def __init__(self, chain: ctypes.c_void_p, grammar: ctypes.c_void_p | None) -> None:
        self.chain = chain
        self.grammar = grammar
        self.banned: np.ndarray[Any, np.dtype[Any]] | None = None
        self.biases: tuple[np.ndarray[Any, np.dtype[Any]], np.ndarray[Any, np.dtype[Any]]] | None
        self.biases = None
        self.needed = 0  # allowed candidates among the top PREFILTER for an exact choice; 0: off


class Samplers:
    """The samplers of every slot of one context. Engine thread only, except
    :meth:`grammar_sampler`, which reads the vocabulary alone."""

    def __init__(self, vocab: ctypes.c_void_p, n_vocab: int, n_slots: int) -> None:
        self._vocab = vocab
        self.n_vocab = n_vocab
        self._slots: list[_Slot | None] = [None] * n_slots
        self._all = np.zeros(n_vocab, dtype=_CANDIDATE)
        self._all["id"] = np.arange(n_vocab, dtype=np.int32)
        self._top = np.zeros(min(PREFILTER, n_vocab), dtype=_CANDIDATE)
        # Counts of how grammar choices were made, for tests and benchmarks.
        self.passes = {"chosen": 0, "top": 0, "full": 0}

    def grammar_sampler(self, grammar: Grammar) -> ctypes.c_void_p | None:
        gbnf, root = grammar.gbnf.encode(), grammar.root.encode()
        if not grammar.triggers:
            sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf, root)
        else:
            patterns = (ctypes.c_char_p * len(grammar.triggers))(
                *(t.encode() for t in grammar.triggers)
            )
            sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                self._vocab, gbnf, root, patterns, len(grammar.triggers), None, 0
            )
        return cast(ctypes.c_void_p | None, sampler or None)

    def begin(self, slot: int, sampling: SamplingParams) -> None:
        """Fresh samplers for ``slot``; raises RuntimeError if llama.cpp refuses the grammar."""
        self.end(slot)
        grammar = None
        if sampling.grammar is not None:
            grammar = self.grammar_sampler(sampling.grammar)
            if grammar is None:
                raise RuntimeError("llama.cpp could not parse the grammar")
        state = _Slot(self._build_chain(sampling), grammar)
        if grammar is not None:
            banned = [token for token, bias in sampling.logit_bias if bias == float("-inf")]
            state.banned = np.array(banned, dtype=np.int64) if banned else None
            if sampling.logit_bias:
                ids, values = zip(*sampling.logit_bias, strict=True)
                state.biases = (np.array(ids, dtype=np.int64), np.array(values, dtype=np.float32))
            state.needed = _prefilter_needs(sampling, len(self._top))
        self._slots[slot] = state

    def end(self, slot: int) -> None:
        state = self._slots[slot]
        if state is not None:
            llama_cpp.llama_sampler_free(state.chain)
            if state.grammar is not None:
                llama_cpp.llama_sampler_free(state.grammar)
            self._slots[slot] = None

    def close(self) -> None:
        for slot in range(len(self._slots)):
            self.end(slot)

    def sample(self, slot: int, ctx: ctypes.c_void_p, batch_index: int) -> int:
        """Choose ``slot``'s next token from the logits at ``batch_index`` of the last decode,
        and accept it into its samplers."""
        state = self._slots[slot]
        assert state is not None, f"slot {slot} has no sampler"
        if state.grammar is None:  # all in C; it also accepts the token into the chain
            return int(llama_cpp.llama_sampler_sample(state.chain, ctx, batch_index))
        pointer = llama_cpp.llama_get_logits_ith(ctx, batch_index)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        token = self._choose(state.chain, self._all, logits)
        if _allows(state.grammar, token):
            self.passes["chosen"] += 1
        else:
            token = self._constrained(state, logits)
            if not _allows(state.grammar, token):
                raise SamplingDeadEnd("the grammar refused every token the samplers chose")
        llama_cpp.llama_sampler_accept(state.grammar, token)
        llama_cpp.llama_sampler_accept(state.chain, token)
        return token

    def _constrained(self, state: _Slot, logits: np.ndarray[Any, np.dtype[Any]]) -> int:
        assert state.grammar is not None
        if state.needed:
            biased = logits
            if state.biases is not None:
                biased = logits.copy()
                np.add.at(biased, state.biases[0], state.biases[1])
            top = self._top
            top["id"] = np.argpartition(-biased, len(top) - 1)[: len(top)]
            top["logit"] = logits[top["id"]]
            top["p"] = 0.0
            _apply(state.grammar, top)
            if self._allowed(state, top).sum() >= state.needed:
                self.passes["top"] += 1
                return self._select(state.chain, top)
        self.passes["full"] += 1
        every = self._all
        every["id"] = np.arange(self.n_vocab, dtype=np.int32)
        every["logit"] = logits
        every["p"] = 0.0
        _apply(state.grammar, every)
        if not self._allowed(state, every).any():
            raise SamplingDeadEnd(
                "no token can follow: logit_bias bans every token the grammar allows here"
            )
        return self._select(state.chain, every)

    @staticmethod
    def _allowed(state: _Slot, candidates: np.ndarray[Any, np.dtype[Any]]) -> Any:
        allowed = np.isfinite(candidates["logit"])
        if state.banned is not None:
            allowed &= ~np.isin(candidates["id"], state.banned)
        return allowed

    def _choose(
        self,
        chain: ctypes.c_void_p,
        candidates: np.ndarray[Any, np.dtype[Any]],
        logits: np.ndarray[Any, np.dtype[Any]],
    ) -> int:
        candidates["id"] = np.arange(self.n_vocab, dtype=np.int32)
        candidates["logit"] = logits
        candidates["p"] = 0.0
        return self._select(chain, candidates)

    @staticmethod
    def _select(chain: ctypes.c_void_p, candidates: np.ndarray[Any, np.dtype[Any]]) -> int:
        """Run the chain over ``candidates`` and return its choice (not accepted yet)."""
        data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        array = llama_cpp.llama_token_data_array(data, len(candidates), -1, False)
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            raise RuntimeError("the sampler chain selected no token")
        return int(data[array.selected].id)

    def _build_chain(self, p: SamplingParams) -> ctypes.c_void_p:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if p.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(p.logit_bias))()
            for entry, (token, bias) in zip(biases, p.logit_bias, strict=True):
                entry.token, entry.bias = token, bias
            add(chain, llama_cpp.llama_sampler_init_logit_bias(self.n_vocab, len(biases), biases))
        if _penalised(p):
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    self.n_vocab,
                    p.penalty_last_n,
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                ),
            )
        if p.temperature <= 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return cast(ctypes.c_void_p, chain)
        if 0 < p.top_k < self.n_vocab:
            add(chain, llama_cpp.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(p.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(native_seed(p.seed)))
        return cast(ctypes.c_void_p, chain)


def _penalised(p: SamplingParams) -> bool:
    return p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def _prefilter_needs(p: SamplingParams, size: int) -> int:
    """How many allowed tokens the top ``size`` must hold for the chain's choice among them
    to be its choice among all; 0 when no number is enough."""
    if _penalised(p):
        return 0  # penalties lower seen tokens' logits after the bias, reordering candidates
    if p.temperature <= 0.0:
        return 1  # greedy: the best allowed token
    if 0 < p.top_k <= size:
        return p.top_k  # the k best allowed tokens
    return 0  # every candidate may be drawn


def _apply(grammar: ctypes.c_void_p, candidates: np.ndarray[Any, np.dtype[Any]]) -> None:
    data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
    array = llama_cpp.llama_token_data_array(data, len(candidates), -1, False)
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))


def _allows(grammar: ctypes.c_void_p, token: int) -> bool:
    single = llama_cpp.llama_token_data(token, 1.0, 0.0)
    one = llama_cpp.llama_token_data_array(ctypes.pointer(single), 1, -1, False)
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(one))
    return bool(single.logit != float("-inf"))


def native_seed(seed: int | None) -> int:
    """Map an OpenAI int64 seed to llama.cpp's uint32; None means a random seed."""
    if seed is None:
        return int(llama_cpp.LLAMA_DEFAULT_SEED)
    native = seed & 0xFFFFFFFF
    # 0xFFFFFFFF is llama.cpp's "pick a random seed": keep explicit seeds deterministic.
    return native if native != llama_cpp.LLAMA_DEFAULT_SEED else 0
