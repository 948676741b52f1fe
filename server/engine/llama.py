"""The one module that calls llama.cpp, through llama-cpp-python's low-level ctypes API.

:class:`LlamaBackend` owns a model, one ``llama_context`` with ``n_slots`` sequences over a
unified KV cache, one reusable ``llama_batch``, and a sampler chain per slot. It is driven by
exactly one thread (the scheduler's engine thread); only the tokenizer methods, which read the
immutable vocabulary, may be called from other threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import llama_cpp
import numpy as np

from server.engine.backend import BatchEntry
from server.engine.embedder import LlamaEmbedder
from server.engine.sampler import Samplers
from server.engine.slots import MIN_RECOMPUTED
from server.engine.tokenizer import SpecialToken, Tokenizer
from server.engine.types import Grammar, SamplingParams, TopLogprob
from server.errors import ModelUnavailableError
from server.models.context import CACHE_TYPE_BYTES

logger = logging.getLogger(__name__)
_native_logger = logging.getLogger("hearth.llama_cpp")

# ggml log levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
_NATIVE_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_NATIVE_MAX_BYTES = 1000


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _forward_native_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp is chatty on stderr; route it into logging so the server's log stays readable.
    # A message is cut short: some quote their input, and a client's input can be megabytes.
    message = text[:_NATIVE_MAX_BYTES].decode(errors="replace").rstrip()
    if len(text) > _NATIVE_MAX_BYTES:
        message += f" ... ({len(text)} bytes)"
    _native_logger.log(_NATIVE_LEVELS.get(level, logging.DEBUG), "%s", message)


def _init_llama() -> None:
    llama_cpp.llama_log_set(_forward_native_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()


def system_info() -> str:
    """What llama.cpp was built with and uses on this CPU (its vector extensions, backends)."""
    _init_llama()
    return bytes(llama_cpp.llama_print_system_info() or b"").decode(errors="replace").strip()


# llama_token_attr bits (llama.h)
_ATTR_UNKNOWN, _ATTR_CONTROL, _ATTR_USER_DEFINED = 1 << 0, 1 << 3, 1 << 4
_ATTR_LSTRIP, _ATTR_RSTRIP = 1 << 7, 1 << 8

# llama_flash_attn_type: AUTO = -1, DISABLED = 0, ENABLED = 1
_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}

# KV cache element types (ggml_type) and their bytes per element (quantized: per block of 32).
# ggml's type of each KV cache element type (their sizes: server/models/context.py).
CACHE_TYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "bf16": 30,
    "q8_0": 8,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "iq4_nl": 20,
}


class LlamaBackend:
    """A loaded GGUF model with ``n_slots`` independent sequences sharing one context.

    ``n_ctx`` is each sequence's context; the KV cache holds ``n_slots * n_ctx`` cells, so a
    sequence never runs out of room because its neighbours are long. By default each sequence
    has its own stream of cells: its attention then sums over exactly the cells it would have
    alone, so a greedy or seeded request gives the same text whether it runs alone or beside
    others. ``kv_unified`` pools the cells instead; the placement of a sequence's cells among
    its neighbours' then changes the order of floating-point sums, and outputs drift.
    """

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_slots: int,
        n_threads: int,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        kv_unified: bool = False,
        flash_attn: str = "auto",
        cache_type_k: str = "f16",
        cache_type_v: str = "f16",
    ) -> None:
        _init_llama()
        if not path.is_file():
            raise ModelUnavailableError(f"model file {path} does not exist")
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise ModelUnavailableError(f"llama.cpp could not load {path} (not a valid GGUF?)")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        # A sequence's saved state records how many KV streams the context has (one per slot
        # unless unified); llama.cpp refuses it in a context with another count.
        streams = 1 if kv_unified else n_slots
        self.identity = model_identity(
            path, kv_unified, flash_attn, cache_type_k, cache_type_v, streams
        )

        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = n_ctx * n_slots
        ctx_params.n_batch = n_batch
        ctx_params.n_ubatch = n_batch
        ctx_params.n_seq_max = n_slots
        ctx_params.n_threads = n_threads
        ctx_params.n_threads_batch = n_threads
        ctx_params.kv_unified = kv_unified
        # Sliding-window models (Gemma 3) keep every position, not only the window: a prefix
        # can then be reused from position 0. truncate() checks this rather than assuming it.
        ctx_params.swa_full = True
        ctx_params.flash_attn_type = _FLASH_ATTN[flash_attn]
        ctx_params.type_k = CACHE_TYPES[cache_type_k]
        ctx_params.type_v = CACHE_TYPES[cache_type_v]
        ctx_params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise ModelUnavailableError(f"llama.cpp could not create a context for {path}")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        # Each decode computes on threads ggml starts for it (the build has no OpenMP, see
        # scripts/llama_wheel.sh). A persistent ggml threadpool attached to the context was
        # no faster here (7.6-7.7 ms a decode against 7.8-8.0, AMD EPYC, two threads), and
        # with it Gemma 3's logits came out NaN.

        self.n_ctx: int = llama_cpp.llama_n_ctx(self._ctx) // n_slots
        self.n_slots = n_slots
        self.n_batch = n_batch
        # Only without flash attention does recomputing a second cached token keep a reused
        # prompt's logits exact (server/engine/slots.py).
        self.min_recomputed = MIN_RECOMPUTED if flash_attn == "off" else 1
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_embd: int = llama_cpp.llama_model_n_embd(self._model)
        # The KV cache's size: every layer keeps a key and a value vector per cell.
        n_head = max(1, llama_cpp.llama_model_n_head(self._model))
        head_dim = self.n_embd // n_head
        kv_width = llama_cpp.llama_model_n_head_kv(self._model) * head_dim
        n_layer = llama_cpp.llama_model_n_layer(self._model)
        cell_bytes = kv_width * (CACHE_TYPE_BYTES[cache_type_k] + CACHE_TYPE_BYTES[cache_type_v])
        self.kv_cache_bytes = int(n_layer * n_ctx * n_slots * cell_bytes)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, n_slots)
        self.samplers = Samplers(self._vocab, self.n_vocab, n_slots)
        self._piece_cache: dict[int, bytes] = {}
        self.max_token_bytes = 1
        self.tokenizer = self._build_tokenizer()

    # -- tokenizer (thread-safe: reads the vocabulary only) ---------------------------------

    def tokenize(self, text: str, *, add_special: bool, markup: bool = False) -> list[int]:
        """``text`` as token ids. Only with ``markup`` (a rendered chat template) may its
        special-token text become control tokens; see :mod:`server.engine.tokenizer`."""
        return self.tokenizer.tokenize(text, add_special=add_special, markup=markup)

    def _encode_plain(self, text: str) -> list[int]:
        """One piece of plain text, as llama.cpp tokenizes it with nothing added or parsed."""
        # JSON may carry lone surrogates, which are not valid UTF-8: replace them, don't fail.
        data = text.encode("utf-8", errors="replace")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, False)
        if n < 0:  # the buffer was too small; -n is the size needed
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, False)
        return list(buf[:n])

    def _build_tokenizer(self) -> Tokenizer:
        """The vocabulary's special tokens (those llama.cpp splits text at: control, unknown
        and user-defined), and the longest token text, which bounds how much text can fit in
        a context (:attr:`max_token_bytes`)."""
        specials: list[SpecialToken] = []
        longest = 1
        get_attr, get_text = llama_cpp.llama_vocab_get_attr, llama_cpp.llama_vocab_get_text
        for token in range(self.n_vocab):
            attr = get_attr(self._vocab, token)
            text: bytes = get_text(self._vocab, token) or b""
            longest = max(longest, len(text))
            if attr & (_ATTR_CONTROL | _ATTR_USER_DEFINED | _ATTR_UNKNOWN) and text:
                specials.append(
                    SpecialToken(
                        token,
                        text.decode("utf-8", errors="replace"),
                        lstrip=bool(attr & _ATTR_LSTRIP),
                        rstrip=bool(attr & _ATTR_RSTRIP),
                        control=bool(attr & (_ATTR_CONTROL | _ATTR_UNKNOWN)),
                    )
                )
        self.max_token_bytes = longest
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        return Tokenizer(specials, self._encode_plain, self._llama_tokenize_added(), bos)

    def _llama_tokenize_added(self) -> list[int]:
        """The tokens llama.cpp adds around any text with ``add_special`` (BOS, EOS, SEP)."""
        buf = (llama_cpp.llama_token * 8)()
        n = llama_cpp.llama_tokenize(self._vocab, b"", 0, buf, 8, True, False)
        return list(buf[: max(0, n)])

    def token_piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes one token stands for (control tokens render empty unless ``special``)."""
        if not special and token in self._piece_cache:
            return self._piece_cache[token]
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        piece = buf.raw[:n]
        if not special:
            self._piece_cache[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    @property
    def adds_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def special_token_text(self, which: str) -> str:
        """Text of the ``bos`` or ``eos`` token, as a chat template expects it; '' if none."""
        token = (
            llama_cpp.llama_vocab_bos(self._vocab)
            if which == "bos"
            else llama_cpp.llama_vocab_eos(self._vocab)
        )
        if token < 0:
            return ""
        text: bytes = llama_cpp.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None

    # -- sequences (engine thread only) ------------------------------------------------------

    def check_grammar(self, grammar: Grammar) -> str | None:
        """Why llama.cpp refuses ``grammar``, or None if it accepts it. Safe from any thread:
        parsing reads the vocabulary only."""
        sampler = self.samplers.grammar_sampler(grammar)
        if not sampler:
            return "llama.cpp could not parse the grammar"
        llama_cpp.llama_sampler_free(sampler)
        return None

    def begin(self, slot: int, sampling: SamplingParams) -> None:
        """Give ``slot`` fresh samplers; its KV cells are left as they are."""
        self.samplers.begin(slot, sampling)

    def end(self, slot: int) -> None:
        """The sequence is done; its KV cells stay, for a later request to reuse."""
        self.samplers.end(slot)

    def clear(self, slot: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)

    def truncate(self, slot: int, keep: int) -> bool:
        """Keep positions ``[0, keep)`` of ``slot`` and drop the rest. False (and the slot
        cleared) when the memory cannot do that exactly: a recurrent state cannot be cut, and
        a sliding-window cache may already have dropped early positions."""
        if keep <= 0:
            self.clear(slot)
            return keep == 0
        ok = bool(llama_cpp.llama_memory_seq_rm(self._memory, slot, keep, -1))
        ok = ok and llama_cpp.llama_memory_seq_pos_min(self._memory, slot) == 0
        ok = ok and llama_cpp.llama_memory_seq_pos_max(self._memory, slot) == keep - 1
        if not ok:
            self.clear(slot)
        return ok

    @property
    def can_drop_tail(self) -> bool:
        """Whether :meth:`drop_tail` works: not for recurrent state, which cannot be cut."""
        model = self._model
        return not (
            llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model)
        )

    def drop_tail(self, slot: int, keep: int) -> bool:
        """Drop ``slot``'s positions from ``keep`` on, keeping the rest as it is (speculation's
        rollback). Unlike :meth:`truncate`, a sliding-window cache that has let early
        positions go is fine here: only the newest are dropped. False if it did not work."""
        ok = bool(llama_cpp.llama_memory_seq_rm(self._memory, slot, keep, -1))
        return ok and llama_cpp.llama_memory_seq_pos_max(self._memory, slot) == keep - 1

    def save_state(self, slot: int, allocate: Callable[[int], memoryview]) -> memoryview:
        """``slot``'s KV state, as llama.cpp serializes it, written straight into a buffer from
        ``allocate(size)``: states are tens of megabytes, and copies show in time to first token."""
        size = llama_cpp.llama_state_seq_get_size(self._ctx, slot)
        state = allocate(size)
        written = llama_cpp.llama_state_seq_get_data(
            self._ctx, (ctypes.c_uint8 * size).from_buffer(state), size, slot
        )
        return state[:written]

    def restore_state(self, slot: int, state: memoryview) -> bool:
        """Load a state from :meth:`save_state` into ``slot``; False (slot cleared) if
        llama.cpp refuses it."""
        self.clear(slot)
        buf = (ctypes.c_uint8 * len(state)).from_buffer(state)
        if llama_cpp.llama_state_seq_set_data(self._ctx, buf, len(state), slot) == 0:
            self.clear(slot)
            return False
        return True

    def copy_sequence(self, source: int, target: int) -> None:
        """Make ``target`` hold what ``source`` holds. With a stream per sequence this copies
        the KV buffer itself, at the start of the next decode; truncate ``target`` after."""
        self.clear(target)
        llama_cpp.llama_memory_seq_cp(self._memory, source, target, -1, -1)

    def decode(self, entries: Sequence[BatchEntry]) -> None:
        """One ``llama_decode`` over ``entries``; entry ``i`` with logits is sampled at ``i``."""
        batch = self._batch
        for i, entry in enumerate(entries):
            batch.token[i] = entry.token
            batch.pos[i] = entry.position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = entry.slot
            batch.logits[i] = entry.want_logits
        batch.n_tokens = len(entries)
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")

    def output_logits(self, count: int) -> np.ndarray:
        """A copy of the last decode's ``count`` rows of logits, in batch order."""
        pointer = llama_cpp.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(pointer, shape=(count, self.n_vocab)).copy()

    def sample(self, slot: int, batch_index: int) -> int:
        """``slot``'s next token from the logits at ``batch_index`` (see
        :mod:`server.engine.sampler`); raises SamplingDeadEnd when its grammar allows none."""
        return self.samplers.sample(slot, self._ctx, batch_index)

    def logprobs(
        self, batch_index: int, token: int, top: int
    ) -> tuple[float, tuple[TopLogprob, ...]]:
        """Log-probability of ``token`` and the ``top`` likeliest tokens at ``batch_index``,
        from the model's raw logits (before penalties, bias, grammar or truncation)."""
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, batch_index)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        peak = logits.max()
        log_total = peak + np.log(np.exp(logits - peak).sum())
        alternatives: tuple[TopLogprob, ...] = ()
        if top > 0:
            best = (
                np.argpartition(-logits, top - 1)[:top]
                if top < self.n_vocab
                else np.arange(self.n_vocab)
            )
            best = best[np.argsort(-logits[best], kind="stable")]
            alternatives = tuple(
                TopLogprob(int(t), self.token_piece(int(t)), min(0.0, float(logits[t] - log_total)))
                for t in best
            )
        return min(0.0, float(logits[token] - log_total)), alternatives

    def embedder(self, *, n_ctx: int, n_seqs: int, n_threads: int, pooling: str) -> LlamaEmbedder:
        """A second context on the same weights that returns pooled embeddings."""
        return LlamaEmbedder(
            self._model, n_ctx=n_ctx, n_seqs=n_seqs, n_threads=n_threads, pooling=pooling
        )

    def close(self) -> None:
        self.samplers.close()
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None


# The model identity reads this much from each of several places across the GGUF.
_IDENTITY_SAMPLES, _IDENTITY_BLOCK = 32, 1 << 16


def model_identity(path: Path, *layout: object) -> str:
    """What a saved KV state depends on: the weights, the llama.cpp build, and the cache
    ``layout`` (pooled or not; flash attention stores V untransposed; the element types; the
    number of streams).
    States saved under another identity are never loaded.

    The GGUF's first MiB is mostly metadata (all of it, for SmolLM2), which two fine-tunes of
    one base model can share to the byte, along with their size. So the identity also hashes
    its last MiB and 64 KiB at 32 places spread over the tensors: 3 MiB read, whatever the
    model's size."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    fields = "|".join(str(field) for field in layout)
    digest.update(f"{llama_cpp.__version__}|{size}|{fields}|".encode())
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        for i in range(_IDENTITY_SAMPLES):
            fh.seek(size * i // _IDENTITY_SAMPLES)
            digest.update(fh.read(_IDENTITY_BLOCK))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return digest.hexdigest()
