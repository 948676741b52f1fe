"""Embeddings: a second llama.cpp context on a loaded model's weights, with pooled outputs.

Kept apart from :mod:`server.engine.llama` (generation) because it is its own context with its
own batch and its own caller (the embeddings service, one request at a time), never the decode
loop's. Like that module, it is driven through llama-cpp-python's low-level ctypes API.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

import llama_cpp

from server.errors import ModelUnavailableError


class EmbeddingCancelled(Exception):
    """The request was abandoned; the rest of its inputs were not embedded."""


# llama_pooling_type: UNSPECIFIED = -1 (the model's own), MEAN = 1, CLS = 2, LAST = 3
_POOLING = {"auto": -1, "mean": 1, "cls": 2, "last": 3}


class LlamaEmbedder:
    """A context with pooled embedding outputs, sharing a loaded model's weights.

    Separate from the generation context, so embedding never disturbs the decode loop's slots;
    llama.cpp allows several contexts on one model. Not thread-safe: the caller serializes.
    A model whose GGUF names no pooling (a chat model) is pooled by the mean of its tokens.
    """

    def __init__(
        self, model: ctypes.c_void_p, *, n_ctx: int, n_seqs: int, n_threads: int, pooling: str
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        # Pooling needs each input whole in one micro-batch.
        params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = n_seqs
        params.n_threads = params.n_threads_batch = n_threads
        params.embeddings = True
        if pooling == "auto":
            # Embedding models declare their pooling in the GGUF; chat models do not, and
            # are pooled by their mean.
            declared = _model_metadata(model, "{arch}.pooling_type")
            pooling = "mean" if declared in (None, "0") else "auto"
        params.pooling_type = _POOLING[pooling]
        params.kv_unified = True
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise ModelUnavailableError("llama.cpp could not create an embedding context")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.n_ctx = n_ctx
        self.n_seqs = n_seqs
        self.n_embd: int = llama_cpp.llama_model_n_embd(model)
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def embed(
        self, inputs: Sequence[Sequence[int]], cancelled: Callable[[], bool] = lambda: False
    ) -> list[list[float]]:
        """One pooled vector per input, each at most ``n_ctx`` tokens. ``cancelled`` is asked
        between decodes; when it says so, :class:`EmbeddingCancelled` is raised."""
        vectors: list[list[float]] = []
        group: list[Sequence[int]] = []
        for tokens in inputs:
            if group and (
                len(group) == self.n_seqs or sum(map(len, group)) + len(tokens) > self.n_ctx
            ):
                if cancelled():
                    raise EmbeddingCancelled
                vectors += self._embed_group(group)
                group = []
            group.append(tokens)
        if group:
            vectors += self._embed_group(group)
        return vectors

    def _embed_group(self, group: Sequence[Sequence[int]]) -> list[list[float]]:
        llama_cpp.llama_memory_clear(self._memory, True)
        batch = self._batch
        n = 0
        for seq, tokens in enumerate(group):
            for position, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = position
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = True
                n += 1
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} while embedding")
        vectors = []
        for seq in range(len(group)):
            pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
            if not pointer:
                raise RuntimeError("llama.cpp returned no pooled embedding")
            vectors.append(list(pointer[: self.n_embd]))
        return vectors

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None


def _model_metadata(model: ctypes.c_void_p, key: str) -> str | None:
    """A GGUF metadata value as text; ``{arch}`` in ``key`` is the model's architecture."""

    def read(name: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(model, name.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    arch = read("general.architecture") or ""
    return read(key.replace("{arch}", arch))
