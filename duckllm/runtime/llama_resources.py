"""llama.cpp's resources, each owned by one small object that frees it, as llama-cpp-python's
_internals.py does: the model (and its vocabulary), a context (and its memory), a batch. Every
raw call into llama.cpp's C API lives in this module; nothing here decides sizes (device.py) or
schedules rows (scheduler.py).
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Sequence

import llama_cpp
import numpy as np

from duckllm.errors import ModelError
from duckllm.prompt_format import Text
from duckllm.runtime.device import Sizes

GGML_TYPE_BF16 = 30       # ggml.h; llama-cpp-python 0.3.36 does not export it
_log_callback = None      # kept alive while llama.cpp holds it


def start(verbose: bool = False) -> None:
    """Process-wide set-up before a model loads. llama.cpp logs every load to stderr: kept only
    when verbose (the last runtime made decides, as the log sink is the process's)."""
    global _log_callback
    if verbose:
        llama_cpp.llama_log_set(None, ctypes.c_void_p(0))          # llama.cpp's own: stderr
    else:
        if _log_callback is None:
            _log_callback = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


def system_info() -> str:
    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


class _Buffer:
    """float32 memory of llama.cpp's, seen by numpy without a copy (and without a ctypes type made per size)."""

    def __init__(self, address: int, shape: tuple[int, ...]):
        self.__array_interface__ = {"data": (address, False), "shape": shape, "typestr": "<f4", "version": 3}


class Model:
    """A loaded model file (weights mmapped, offloaded layers on the GPU)."""

    def __init__(self, path: Path, n_gpu_layers: int):
        self.path = Path(path)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        # No CPU weight repacking: it keeps a second copy of the weights beside the mmapped file,
        # and measured here it was slower too (bench/throughput.py, README).
        params.use_extra_bufts = False
        self.ptr = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.ptr:
            raise ModelError(f"llama.cpp could not load {str(self.path)!r}: the file is corrupt, not a model "
                             f"llama.cpp supports, or too large for memory; re-fetch it with "
                             f"'duckllm models pull NAME' or pick a smaller model")
        self.n_layer = llama_cpp.llama_model_n_layer(self.ptr)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.ptr)

    def chat_template(self) -> str | None:
        template = llama_cpp.llama_model_chat_template(self.ptr, None)
        return template.decode(errors="replace") if template else None

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


class Vocab:
    """The model's vocabulary (owned by the model, which must outlive it). end: the prompt
    format's end-of-turn marker, whose tokens end an answer as the vocabulary's own end tokens do."""

    def __init__(self, model: Model, end: str):
        self._model = model
        self.ptr = llama_cpp.llama_model_get_vocab(model.ptr)
        self.n_tokens = llama_cpp.llama_vocab_n_tokens(self.ptr)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.ptr))
        self.end_tokens = self.tokenize(end, special=True)
        self._pieces: list[str] | None = None

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        data = text.encode("utf-8", errors="replace")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.ptr, data, len(data), buf, capacity, add_bos, special)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.ptr, data, len(data), buf, capacity, add_bos, special)
        return list(buf[:n])

    def tokenize_prompt(self, text: Text, *, add_bos: bool = False) -> list[int]:
        """As tokenize(str(text), special=True), but only markup may hold control tokens
        (prompt_format.Text): the text between them, markup's and content's alike, is tokenized
        as one plain fragment, as llama.cpp tokenizes the text between control tokens."""
        control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN   # only special=True reads these
        tokens = [llama_cpp.llama_vocab_bos(self.ptr)] if add_bos else []
        plain = ""
        for piece, markup in text.pieces:
            for token in self.tokenize(piece, special=True) if markup else ():
                if llama_cpp.llama_vocab_get_attr(self.ptr, token) & control:
                    before, _, piece = piece.partition(self.detokenize([token], special=True))
                    tokens += self.tokenize(plain + before) + [token]
                    plain = ""
            plain += piece
        return tokens + self.tokenize(plain)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        """The tokens' text; special: control tokens as their text (else empty)."""
        out = bytearray()
        buf = ctypes.create_string_buffer(256)
        for token in tokens:
            n = llama_cpp.llama_token_to_piece(self.ptr, token, buf, len(buf), 0, special)
            out += buf.raw[:max(n, 0)]
        return out.decode("utf-8", errors="replace")

    def is_end(self, token: int) -> bool:
        return token in self.end_tokens or bool(llama_cpp.llama_vocab_is_eog(self.ptr, token))

    def piece_texts(self) -> list[str]:
        """Every token's text (control tokens are empty), made once."""
        if self._pieces is None:
            self._pieces = [self.detokenize([t]) for t in range(self.n_tokens)]
        return self._pieces


class Batch:
    """Tokens for one llama_decode, in arrays this object owns: filling it is array assignment,
    and a llama_batch struct points into them. Every token belongs to one sequence."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.token = np.zeros(capacity, np.int32)
        self.pos = np.zeros(capacity, np.int32)
        self.seq = np.zeros(capacity, np.int32)
        self.logits = np.zeros(capacity, np.int8)
        self._n_seq_id = np.ones(capacity, np.int32)
        self._seq_ptrs = self.seq.ctypes.data + 4 * np.arange(capacity, dtype=np.uintp)  # &seq[i]
        as_ptr = lambda array, ctype: array.ctypes.data_as(ctypes.POINTER(ctype))
        self.struct = llama_cpp.llama_batch(
            n_tokens=0, token=as_ptr(self.token, llama_cpp.llama_token), embd=None,
            pos=as_ptr(self.pos, llama_cpp.llama_pos), n_seq_id=as_ptr(self._n_seq_id, ctypes.c_int32),
            seq_id=as_ptr(self._seq_ptrs, ctypes.POINTER(llama_cpp.llama_seq_id)),
            logits=as_ptr(self.logits, ctypes.c_int8))

    def fill(self, token, pos, seq, logits) -> None:
        """Set the batch to these tokens (positions, sequences, whether each one's logits are wanted)."""
        n = len(token)
        self.token[:n], self.pos[:n], self.seq[:n], self.logits[:n] = token, pos, seq, logits
        self.struct.n_tokens = n


class Context:
    """A context over a model: its KV memory (sequences of cells) and the logits of its last decode."""

    def __init__(self, model: Model, sizes: Sizes):
        params = llama_cpp.llama_context_default_params()
        if sizes.kv_cache == "bf16":
            params.type_k = params.type_v = GGML_TYPE_BF16
        if sizes.flash_attn:
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.n_ctx = sizes.n_ctx
        params.n_batch = params.n_ubatch = sizes.n_batch
        params.n_seq_max = sizes.n_seqs
        params.n_outputs_max = max(sizes.n_batch, sizes.n_seqs)
        params.kv_unified = True          # rows share the prefix's cells instead of copying them
        params.n_threads = params.n_threads_batch = sizes.n_threads
        params.no_perf = True
        self.ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise ModelError(f"llama.cpp could not create a context of {sizes.n_ctx} tokens for {model.path.name}; "
                             f"set DUCKLLM_CONTEXT or DUCKLLM_BATCH lower, or free memory")
        self.n_ctx = llama_cpp.llama_n_ctx(self.ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model.ptr))
        self._memory = llama_cpp.llama_get_memory(self.ptr)

    def decode(self, batch: Batch) -> int:
        """llama.cpp's return code: 0, or the KV cache is full or the input invalid."""
        return llama_cpp.llama_decode(self.ptr, batch.struct)

    def logits(self, n_outputs: int) -> np.ndarray:
        """The last decode's logits, one row per token whose logits were wanted, in batch order:
        llama.cpp's own buffer, valid only until the next decode."""
        address = ctypes.cast(llama_cpp.llama_get_logits(self.ptr), ctypes.c_void_p).value
        return np.asarray(_Buffer(address, (n_outputs, self.n_vocab)))

    def seq_rm(self, seq: int, start: int = -1, end: int = -1) -> None:
        """Free a sequence's cells from position start to end (-1: all, to the last)."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq, start, end)

    def seq_cp(self, source: int, dest: int) -> None:
        """Make dest share all of source's cells."""
        llama_cpp.llama_memory_seq_cp(self._memory, source, dest, -1, -1)

    def clear(self) -> None:
        """Free every cell of every sequence."""
        llama_cpp.llama_memory_clear(self._memory, False)

    def state_get(self, seq: int, max_bytes: int) -> bytes | None:
        """A sequence's KV state as llama.cpp serialises it; None when empty or over max_bytes."""
        size = llama_cpp.llama_state_seq_get_size(self.ptr, seq)
        if not size or size > max_bytes:
            return None
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ptr, buffer, size, seq)
        return bytes(memoryview(buffer)[:written]) if written else None

    def state_set(self, seq: int, data: bytearray) -> bool:
        """Load a state state_get gave into seq; True when it now holds it."""
        buffer = (ctypes.c_uint8 * len(data)).from_buffer(data)
        return llama_cpp.llama_state_seq_set_data(self.ptr, buffer, len(data), seq) == len(data)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_free(self.ptr)
            self.ptr = None
