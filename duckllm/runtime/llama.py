"""A Runtime over llama.cpp (llama-cpp-python's raw C bindings).

One LlamaRuntime owns one model, one context and one batch, and frees them. All rows of a call
share one evaluated prompt prefix (KV cache sequence 0, copied by reference to each row's
sequence) and are decoded together as parallel sequences with continuous batching: each
llama_decode carries the next token of every row in flight and the prompts of rows just admitted.

llama.cpp releases the GIL and a context is not thread-safe, so every public method holds the
runtime's lock: concurrent callers (DuckDB runs UDFs on several threads) queue.
"""
from __future__ import annotations

import ctypes
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from duckllm.engine import cancel
from duckllm.errors import ArgumentError, ModelError
from duckllm.prompt_format import Format, detect
from duckllm.runtime import (
    Answer,
    Choice,
    Generation,
    Pick,
    Program,
    Prompt,
    Say,
    Text,
    Usage,
    Write,
    answer_bound,
    single,
)

PREFIX_SEQ = 0
MAX_SEQS = 256            # llama.cpp's limit
# llama.cpp's CPU kernels depend on a batch's size and round differently: K-quant matrix products
# take another kernel under 8 tokens; attention over an f16 cache a tiled one from 64 tokens and a
# split one for a lone token over 512+ cells. Over a bf16 cache attention always takes its per-row
# kernel (which sums in f32), so with batches of at least 8 tokens every row stays on the same
# kernels and its answer does not depend, to the last bit, on what is decoded beside it.
CPU_MIN_BATCH = 8
# Defaults by device. A GPU decodes 2,048 tokens in one batch little slower than 512, and 256 rows
# in flight (room for them in 8,192 cells) keep its batches full: on an H200, 294-296 rows/s against
# 270-273 with the CPU's sizes (README, GPU).
DEFAULTS = {"cpu": dict(n_ctx=4096, n_batch=512, n_parallel=64),
            "gpu": dict(n_ctx=8192, n_batch=2048, n_parallel=256)}
GGML_TYPE_BF16 = 30       # ggml.h; llama-cpp-python 0.3.36 does not export it
SPAN_CANDIDATES = 64      # a span's next token is the likeliest of this many that stays in the source
_KIND_CHARS = {           # what integer and number values may be written with ('null', 'n/a' too)
    "integer": set(" 0123456789-+,nul/a"),
    "number": set(" 0123456789-+.,eE%nul/a"),
}


def physical_cores() -> int:
    """Physical cores, not hyperthreads: llama.cpp runs no faster on siblings."""
    try:
        cores = set()
        physical = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                physical = value.strip()
            elif key == "core id":
                core = value.strip()
                cores.add((physical, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


_log_callback = None


def _quiet_llama_logs(llama_cpp) -> None:
    """llama.cpp logs every load to stderr; keep it for DUCKLLM_VERBOSE=1 only."""
    global _log_callback
    if _log_callback is None and not os.environ.get("DUCKLLM_VERBOSE"):
        _log_callback = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


@dataclass
class _Row:
    """One row in flight: its KV sequence, next position, and its answer program's state."""
    index: int
    seq: int
    pos: int
    end: int                              # first KV position past the cells reserved for it
    truncated: bool
    program: object                       # the row's answer program (a generator)
    step: object = None                   # the decision step in progress (_Picking, _Writing)
    reply: object = None                  # what the program is sent next
    ended: bool = False                   # the answer's end token was chosen: nothing may follow
    prompt_left: int = 0                  # prompt tokens not yet fed (counted apart from answers)
    prompt: tuple = ()                    # its prompt's tokens (guesses for written values)
    value: object = None
    done: bool = False


class LlamaRuntime:
    def __init__(self, path: str | Path, fmt: Format | None = None, *, n_ctx: int | None = None,
                 n_batch: int | None = None, n_parallel: int | None = None, n_threads: int | None = None,
                 n_gpu_layers: int | None = None, batch_invariant: bool = True):
        """n_ctx, n_batch and n_parallel default by device (DEFAULTS)."""
        import llama_cpp

        self._c = llama_cpp
        _quiet_llama_logs(llama_cpp)
        llama_cpp.llama_backend_init()
        self.path = Path(path)
        self.usage = Usage()
        self._lock = threading.Lock()

        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = (999 if gpu else 0) if n_gpu_layers is None else n_gpu_layers
        # No CPU weight repacking: it keeps a second copy of the weights beside the mmapped file,
        # and measured here it was slower too (bench/throughput.py, README).
        mparams.use_extra_bufts = False
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise ModelError(f"llama.cpp could not load {str(self.path)!r}: the file is corrupt, not a model "
                             f"llama.cpp supports, or too large for memory; re-fetch it with "
                             f"'duckllm models pull NAME' or pick a smaller model")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        template = llama_cpp.llama_model_chat_template(self._model, None)
        self.format = fmt or detect(template.decode(errors="replace") if template else None)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_layer = llama_cpp.llama_model_n_layer(self._model)
        self.n_gpu_layers = min(mparams.n_gpu_layers, self.n_layer + 1) if gpu else 0
        defaults = DEFAULTS["gpu" if self.n_gpu_layers else "cpu"]
        n_ctx = min(n_ctx or defaults["n_ctx"], llama_cpp.llama_model_n_ctx_train(self._model))
        n_batch = n_batch or defaults["n_batch"]
        self.n_parallel = max(1, n_parallel or defaults["n_parallel"])
        self.n_threads = n_threads or physical_cores()

        cparams = llama_cpp.llama_context_default_params()
        self.min_batch, self.kv_cache = 1, "f16"
        if batch_invariant and not self.n_gpu_layers:
            self.min_batch, n_batch = CPU_MIN_BATCH, max(n_batch, CPU_MIN_BATCH)
            cparams.type_k = cparams.type_v = GGML_TYPE_BF16
            self.kv_cache = "bf16"
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        # Rows of an epoch (see _run) each take a sequence; the last one holds throwaway tokens.
        self.row_seqs = min(MAX_SEQS - 2, 2 * self.n_parallel)
        self.scratch_seq = self.row_seqs + 1
        cparams.n_seq_max = self.row_seqs + 2
        cparams.n_outputs_max = max(n_batch, cparams.n_seq_max)
        cparams.kv_unified = True          # rows share the prefix's cells instead of copying them
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path.name}; "
                             f"set DUCKLLM_CONTEXT or DUCKLLM_BATCH lower, or free memory")
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch = n_batch
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._prefix: list[int] = []
        self._alone = False             # one row in flight and none waiting (_Guesses)
        self._end_tokens = self.tokenize(self.format.end, special=True)
        self._pieces: list[str] | None = None
        self._masks: dict = {}
        self._tries: dict = {}

    # ---- resources -------------------------------------------------------------------------

    def close(self) -> None:
        c = getattr(self, "_c", None)
        if c is None:
            return
        with self._lock:
            c.llama_batch_free(self._batch)
            c.llama_free(self._ctx)
            c.llama_model_free(self._model)
            self._c = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def describe(self) -> dict:
        return {
            "model": self.path.name,
            "device": "gpu" if self.n_gpu_layers else "cpu",
            "gpu_layers_offloaded": self.n_gpu_layers,
            "layers": self.n_layer,
            "threads": self.n_threads,
            "context": self.n_ctx,
            "parallel_rows": self.n_parallel,
            "batch_tokens": f"{self.min_batch} to {self.n_batch}" + (" (batch-invariant)" if self.min_batch > 1 else ""),
            "kv_cache": self.kv_cache,
            "system": self._c.llama_print_system_info().decode(errors="replace").strip(),
        }

    @property
    def prefix_tokens(self) -> int:
        """Tokens of the shared prompt held now (the last call's)."""
        return len(self._prefix)

    def prompt_speed(self, n_tokens: int = 256, after_prefix: bool = False) -> float:
        """Prompt-eval tokens per second: one batch of n_tokens in a scratch sequence, fresh or
        after the shared prefix held now (each token then attends over it, as a row's do)."""
        with self._lock:
            start = len(self._prefix) if after_prefix else 0
            tokens = self.tokenize("The quick brown fox jumps over the lazy dog. " * n_tokens)[:n_tokens]
            batch = lambda first: [(t, first + j, (self.scratch_seq,), j == len(tokens) - 1)
                                   for j, t in enumerate(tokens)]
            items = batch(start)
            try:
                self._decode(batch(0)[:8], [None], lambda owner, logits: None)   # pages the weights in
                self._c.llama_memory_seq_rm(self._memory, self.scratch_seq, -1, -1)
                if start:
                    self._c.llama_memory_seq_cp(self._memory, PREFIX_SEQ, self.scratch_seq, -1, -1)
                began = time.perf_counter()
                self._decode(items, [None], lambda owner, logits: None)
                return len(tokens) / (time.perf_counter() - began)
            finally:
                self._c.llama_memory_seq_rm(self._memory, self.scratch_seq, -1, -1)

    # ---- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        data = text.encode("utf-8", errors="replace")
        capacity = len(data) + 8
        buf = (self._c.llama_token * capacity)()
        n = self._c.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_bos, special)
        if n < 0:
            capacity = -n
            buf = (self._c.llama_token * capacity)()
            n = self._c.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_bos, special)
        return list(buf[:n])

    def tokenize_prompt(self, text: Text, *, add_bos: bool = False) -> list[int]:
        """As tokenize(str(text), special=True), but only markup may hold control tokens
        (prompt_format.Text): the text between them, markup's and content's alike, is tokenized
        as one plain fragment, as llama.cpp tokenizes the text between control tokens."""
        control = self._c.LLAMA_TOKEN_ATTR_CONTROL | self._c.LLAMA_TOKEN_ATTR_UNKNOWN   # only special=True reads these
        tokens = [self._c.llama_vocab_bos(self._vocab)] if add_bos else []
        plain = ""
        for piece, markup in text.pieces:
            for token in self.tokenize(piece, special=True) if markup else ():
                if self._c.llama_vocab_get_attr(self._vocab, token) & control:
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
            n = self._c.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            out += buf.raw[:max(n, 0)]
        return out.decode("utf-8", errors="replace")

    def _is_end(self, token: int) -> bool:
        return token in self._end_tokens or bool(self._c.llama_vocab_is_eog(self._vocab, token))

    def _piece_texts(self) -> list[str]:
        """Every token's text (control tokens are empty), for the kinds' token masks."""
        if self._pieces is None:
            self._pieces = [self.detokenize([t]) for t in range(self.n_vocab)]
        return self._pieces

    def _mask(self, kind: str, stop: str | None, or_end: bool) -> tuple[np.ndarray, np.ndarray]:
        """(tokens a value of this kind may take next, those of them that close it with its stop);
        the end token is allowed when the value may end the answer."""
        key = (kind, stop, or_end)
        if key not in self._masks:
            chars = _KIND_CHARS.get(kind)
            go, close = np.zeros(self.n_vocab, bool), np.zeros(self.n_vocab, bool)
            for t, piece in enumerate(self._piece_texts()):
                if not piece:
                    continue
                if stop and stop in piece:
                    before = piece.split(stop, 1)[0]
                    close[t] = chars is None or all(c in chars for c in before)
                else:
                    go[t] = chars is None or all(c in chars for c in piece)
            allowed = go | close
            if stop is None or or_end:
                allowed[self._end_tokens] = True
            self._masks[key] = (allowed, close)
        return self._masks[key]

    # ---- requests --------------------------------------------------------------------------

    def run(self, prompt: Prompt, texts: Sequence[str], program: Callable[[int, int], Program],
            answer_tokens: Callable[[int], int], on_done: Callable[[int, Answer], None] | None = None,
            row_prefixes: Sequence[Text] | None = None) -> list[Answer]:
        with self._lock:
            return self._run(prompt, texts, program, answer_tokens, on_done, row_prefixes)

    def choose(self, prompt: Prompt, texts: Sequence[str], options: Sequence[str],
               score_rest: bool = True) -> list[Choice]:
        """One Pick per row. score_rest=False stops at the token that determines the option:
        its choice_logprob is complete, its token_logprobs cover only the tokens decoded."""
        step = Pick(tuple(options), score_rest=score_rest)
        bound = max(answer_bound(o) for o in options)
        return [a.value for a in self.run(prompt, texts, lambda i, n: single(step), lambda n: bound)]

    def generate(self, prompt: Prompt, texts: Sequence[str], max_tokens: int) -> list[Generation]:
        step = Write(max_tokens)
        return [a.value for a in self.run(prompt, texts, lambda i, n: single(step), lambda n: max_tokens + 1)]

    # ---- scheduling ------------------------------------------------------------------------

    def _run(self, prompt: Prompt, texts, program, answer_tokens, on_done, row_prefixes=None) -> list[Answer]:
        """Continuous batching: the shared prefix is evaluated once (sequence 0); rows take free
        sequences as earlier rows finish, so one llama_decode carries new rows' prompts and the
        answer tokens of rows in flight together.

        A finished row's cells are freed only when every row of its epoch has finished: llama.cpp
        fills the lowest free cells first, and a row whose later tokens went into cells before its
        earlier ones would be attended in another order, and round differently, than alone."""
        shared = self.tokenize_prompt(prompt.shared, add_bos=self._add_bos())
        tail = self.tokenize(prompt.tail, special=True)
        if len(shared) + len(tail) >= self.n_ctx:     # said before llama.cpp fails on it
            raise ArgumentError(f"the instructions, labels and examples take {len(shared) + len(tail)} "
                                f"tokens, more than the model's context of {self.n_ctx}; shorten them "
                                f"(for many labels, preselect := 32 lists only the likeliest with each "
                                f"row) or set DUCKLLM_CONTEXT higher")
        self._ensure_prefix(shared)
        room = self.n_ctx - len(shared) - self.min_batch      # - the cells padding takes (_decode)
        results: list = [None] * len(texts)
        pending = deque(range(len(texts)))
        free_seqs = list(range(self.row_seqs, 0, -1))
        in_flight: dict[int, _Row] = {}
        used = 0                    # KV cells held by this epoch's rows: reserved or, once finished, used
        feeds: list[tuple[_Row, list]] = []
        head = None                 # the next row's fitted prompt, kept while it waits for cells

        def fitted(i):
            own = self.tokenize_prompt(row_prefixes[i]) if row_prefixes else []
            tokens, n_text, limit, truncated = self._fit(texts[i], tail, answer_tokens, room - len(own))
            return i, own + tokens, n_text, limit, truncated
        try:
            while pending or feeds:
                cancel.check()
                admitted = []
                while pending and len(in_flight) < self.n_parallel:
                    if head is None or head[0] != pending[0]:
                        head = fitted(pending[0])
                    i, tokens, n_text, limit, truncated = head
                    if not free_seqs or used + len(tokens) + limit > room:
                        if in_flight:
                            break   # the epoch is full: wait for its rows in flight to finish
                        self._free_rows()
                        free_seqs, used = list(range(self.row_seqs, 0, -1)), 0
                    pending.popleft()
                    row = _Row(index=i, seq=free_seqs.pop(), pos=len(shared), truncated=truncated,
                               end=len(shared) + len(tokens) + limit, program=program(i, n_text))
                    self._c.llama_memory_seq_cp(self._memory, PREFIX_SEQ, row.seq, -1, -1)
                    in_flight[row.seq] = row
                    used += row.end - row.pos
                    row.prompt_left = len(tokens)
                    row.prompt = tuple(tokens)
                    self._advance(row, None, feeds, said=tokens)
                    admitted.append(row)
                items, callbacks = [], []
                for row, fed in feeds:
                    if row.pos + len(fed) > row.end:
                        raise ModelError(f"an answer outgrew the {row.end - row.pos} KV cells reserved for it "
                                         f"(a bug in duckllm: please report it)")
                    n_prompt = min(row.prompt_left, len(fed))    # a row's first feed holds its prompt
                    row.prompt_left -= n_prompt
                    self.usage.prompt_tokens += n_prompt
                    self.usage.generated_tokens += len(fed) - n_prompt
                    for j, (token, callback) in enumerate(fed):
                        items.append((token, row.pos + j, (row.seq,), callback is not None))
                        if callback is not None:
                            callbacks.append(callback)
                    row.pos += len(fed)
                touched = admitted + [row for row, _ in feeds]
                feeds = []
                self._alone = len(in_flight) == 1 and not pending
                self._decode(items, callbacks, lambda callback, logits: callback(logits, feeds))
                for row in touched:
                    if row.done and row.seq in in_flight:
                        results[row.index] = Answer(row.value, row.truncated)
                        if on_done:
                            on_done(row.index, results[row.index])
                        del in_flight[row.seq]
                        used -= row.end - row.pos     # the cells it reserved but did not use
        finally:
            self._free_rows()      # done or interrupted: leave no cells behind
        return results

    def _free_rows(self) -> None:
        """Free every row's cells, and its share of the prefix's (a later prefix may differ)."""
        for seq in range(1, self.row_seqs + 1):
            self._c.llama_memory_seq_rm(self._memory, seq, -1, -1)

    def _advance(self, row: _Row, logits, feeds, said=()) -> None:
        """Drive a row's program: its decision step takes the logits after the row's last fed
        token; a finished step's result goes to the program, whose Say texts are gathered and
        fed before its next decision. logits is None where nothing new was fed."""
        said = list(said)
        while True:
            step = row.step
            if step is not None and step.result is None:
                fed = step.take(logits, lambda lg, fs: self._advance(row, lg, fs))
                if fed:
                    feeds.append((row, fed))
                    return
            if step is not None:
                row.reply, row.step = step.result, None
                row.ended = row.ended or step.ended
            try:
                nxt = row.program.send(row.reply)
            except StopIteration as stop:
                row.value, row.done = stop.value, True
                return
            if row.ended:
                raise ModelError("an answer program went on after its answer ended (a bug in duckllm)")
            row.reply = None
            if isinstance(nxt, Say):
                said += self.tokenize(nxt.text)
                continue
            row.step = (_Picking(self, nxt) if isinstance(nxt, Pick) else
                        _Writing(self, nxt, row.end - row.pos - len(said), _Guesses(self, row)))
            if said:      # the decision needs the logits after what was said
                feeds.append((row, [(t, None) for t in said[:-1]] +
                              [(said[-1], lambda lg, fs: self._advance(row, lg, fs))]))
                return
            if logits is None:
                raise ModelError("an answer program decided before anything was fed (a bug in duckllm)")

    def _fit(self, text: str, tail, answer_tokens, room):
        """A row's tokens, its text cut so text + tail + its answer's bound fit the room left after
        the prefix: the longest cut that fits, taken from its longest parts (runtime.Parts)."""
        avail = room - len(tail)
        parts = [self.tokenize(text)]
        n = total = len(parts[0])
        if n + answer_tokens(n) > avail:
            parts = [self.tokenize(part) for part in getattr(text, "parts", (text,))]   # cut apart
            n = total = sum(len(p) for p in parts)
            lo, hi = 0, n
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if mid + answer_tokens(mid) <= avail else (lo, mid - 1)
            n = lo
        if n < 1:
            raise ArgumentError(f"the instructions and labels take {self.n_ctx - avail} of the model's "
                                f"{self.n_ctx} context tokens and the answer up to {answer_tokens(1)} more, "
                                f"leaving no room for the text; shorten them, ask for a shorter answer "
                                f"(max_tokens, max_entities) or set DUCKLLM_CONTEXT higher")
        kept = [p[:k] for p, k in zip(parts, _shares([len(p) for p in parts], n))]
        return [t for p in kept for t in p] + tail, n, answer_tokens(n), n < total

    def _add_bos(self) -> bool:
        return bool(self._c.llama_vocab_get_add_bos(self._vocab))

    def _ensure_prefix(self, shared: list[int]) -> None:
        """Keep the shared prefix in sequence 0, re-evaluating only where it differs."""
        keep = 0
        while keep < min(len(shared), len(self._prefix)) and shared[keep] == self._prefix[keep]:
            keep += 1
        if keep == len(shared) == len(self._prefix):
            return
        self._c.llama_memory_seq_rm(self._memory, PREFIX_SEQ, keep, -1)
        self._prefix = shared[:keep]   # what sequence 0 holds, should the decode below fail
        self._decode([(t, keep + j, (PREFIX_SEQ,), False) for j, t in enumerate(shared[keep:])])
        self._prefix = list(shared)

    def _trie_of(self, options: tuple[str, ...], stop: str | None, or_end: bool) -> tuple[dict, list[int]]:
        """The options' token trie, and each option's content length (its tokens before the stop)."""
        key = (options, stop, or_end)
        if key not in self._tries:
            closing = self._end_tokens if stop is None else self.tokenize(stop)
            paths = [self.tokenize(o) + closing for o in options] + ([list(self._end_tokens)] if or_end else [])
            content = [len(p) - len(closing) for p in paths[:len(options)]] + ([0] if or_end else [])
            if len(self._tries) > 64:
                self._tries.clear()
            self._tries[key] = (_trie(paths), content)
        return self._tries[key]

    # ---- llama_decode ----------------------------------------------------------------------

    def _decode(self, items, owners=(), observe=None) -> None:
        """Decode (token, pos, seq_ids, want_logits) items in even chunks of at most n_batch,
        a chunk under min_batch padded with throwaway tokens. For each item that wants logits,
        in order, call observe(owner, logits): the logits are llama.cpp's own buffer, valid only
        during the call, so no vocabulary-sized copy is kept."""
        if not items:
            return
        b = self._batch
        owners = iter(owners)
        n_chunks = -(-len(items) // self.n_batch)
        size = -(-len(items) // n_chunks)
        for start in range(0, len(items), size):
            if start:       # a long prompt takes several batches: Ctrl-C need not wait for all
                cancel.check()
            chunk = items[start:start + size]
            padding = max(0, self.min_batch - len(chunk))
            chunk += [(chunk[0][0], j, (self.scratch_seq,), False) for j in range(padding)]
            wanted = []
            for i, (token, pos, seqs, want) in enumerate(chunk):
                b.token[i] = token
                b.pos[i] = pos
                b.n_seq_id[i] = len(seqs)
                for k, s in enumerate(seqs):
                    b.seq_id[i][k] = s
                b.logits[i] = want
                if want:
                    wanted.append(i)
            b.n_tokens = len(chunk)
            rc = self._c.llama_decode(self._ctx, b)
            if padding:
                self._c.llama_memory_seq_rm(self._memory, self.scratch_seq, -1, -1)
            if rc != 0:
                raise ModelError(f"llama_decode failed with code {rc} (the KV cache is full or the "
                                 f"input is invalid); set DUCKLLM_CONTEXT higher or DUCKLLM_PARALLEL lower")
            for i in wanted:
                logits = np.ctypeslib.as_array(self._c.llama_get_logits_ith(self._ctx, i), shape=(self.n_vocab,))
                observe(next(owners), logits)


def _shares(lengths: list[int], n: int) -> list[int]:
    """How many of each part's tokens to keep, n in all: every part up to one cap, the longest cut
    to it (the first of them keep one more where n is not reached evenly)."""
    if sum(lengths) <= n:
        return list(lengths)
    cap = max(c for c in range(n + 1) if sum(min(length, c) for length in lengths) <= n)
    shares = [min(length, cap) for length in lengths]
    for i, length in enumerate(lengths):
        if sum(shares) < n and length > cap:
            shares[i] += 1
    return shares


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + math.log(float(np.sum(np.exp(x - m))))


def _prior_mass(prior: tuple[float, ...], children: dict, allowed: np.ndarray) -> np.ndarray:
    """log of the prior probability of the options below each allowed branch (the end of an
    or_end Pick has no prior: 1)."""
    return np.asarray([_logsumexp(np.asarray([prior[i] if i < len(prior) else 0.0
                                              for i in children[t]["options"]])) for t in allowed.tolist()])


def _trie(paths: list[list[int]]) -> dict:
    """A token trie of the options. A node below which only one option remains carries that
    option's index and full token path: decoding can stop choosing there."""
    root: dict = {"children": {}}
    for index, path in enumerate(paths):
        node = root
        for token in path:
            node = node["children"].setdefault(token, {"children": {}, "options": []})
            node["options"].append(index)
    if len({tuple(p) for p in paths}) != len(paths):
        raise ArgumentError("two labels tokenize identically; make the labels differ in more than case or spacing")

    def mark(node, depth_path):
        for token, child in node["children"].items():
            path = depth_path + [token]
            if len(child["options"]) == 1:
                child["index"] = child["options"][0]
                child["path"] = paths[child["index"]]
            else:
                mark(child, path)
    mark(root, [])
    return root


class _Picking:
    """A Pick in progress: walk the options' trie, choosing the likeliest allowed token where
    options diverge; once one option is left, feed its remaining tokens in one go, scoring them.
    A stop token (or the end token) tells an option from a longer one it prefixes; it is fed
    but not part of the option's tokens."""

    def __init__(self, runtime: LlamaRuntime, step: Pick):
        self.step = step
        self.node, self.content = runtime._trie_of(step.options, step.stop, step.or_end)
        self.depth = 0
        self.logprobs: list[float] = []
        self.choice_logprob = 0.0
        self.branches: list[dict[int, float]] = []
        self.result: Choice | None = None
        self.ended = False

    def take(self, logits: np.ndarray, advance) -> list:
        children = self.node["children"]
        allowed = np.fromiter(children, dtype=np.int64)
        scores = logits[allowed]
        everything = _logsumexp(logits)
        self.branches.append(dict(zip(allowed.tolist(), (scores - everything).tolist())))
        if self.step.prior:                   # each branch less the prior mass of the options below it
            scores = scores - _prior_mass(self.step.prior, children, allowed)
        best = int(np.argmax(scores))
        pick = int(allowed[best])
        self.choice_logprob += float(scores[best]) - _logsumexp(scores)
        self.node = children[pick]
        if self.depth < self.content[self.node["options"][0]]:
            self.logprobs.append(float(logits[pick]) - everything)
        self.depth += 1
        if "index" not in self.node:          # options still diverge below: decode the next token
            return [(pick, advance)]
        index, path = self.node["index"], self.node["path"]
        self.result = Choice(index, self.logprobs, self.choice_logprob, self.branches)
        self.ended = self.step.stop is None or index == len(self.step.options)
        fed = [pick] + path[self.depth:]      # fed[j] is followed by path[depth + j]
        callbacks = [None] * len(fed)
        if self.step.score_rest:
            for j in range(len(fed) - 1):
                if self.depth + j < self.content[index]:
                    callbacks[j] = self._scorer(path[self.depth + j])
        if not self.ended:
            callbacks[-1] = advance
            return list(zip(fed, callbacks))
        scored = [j for j, c in enumerate(callbacks) if c]
        if not scored:                        # nothing left to score: the end token is never fed
            return []
        last = scored[-1]
        score_last = callbacks[last]
        callbacks[last] = lambda lg, fs: (score_last(lg, fs), advance(None, fs))
        return list(zip(fed[:last + 1], callbacks[:last + 1]))

    def _scorer(self, token: int):
        return lambda logits, feeds: self.logprobs.append(float(logits[token]) - _logsumexp(logits))


class _Guesses:
    """Guessed next tokens for a value a row writes while it is decoded alone. On the CPU every
    batch carries at least min_batch tokens (CPU_MIN_BATCH), so rather than pad a lone token, the
    slots check guesses: the tokens that followed the value's last written ones in the row's own
    prompt (a cleaned or extracted value mostly copies it). A guess is kept only where decoding
    picks it anyway, so the answer is the one decoding without guesses gives."""

    def __init__(self, runtime: LlamaRuntime, row: _Row):
        self.rt, self.row = runtime, row

    def next(self, written: list[int], limit: int) -> list[int]:
        rt = self.rt
        limit = min(limit, rt.min_batch - 1)
        if limit < 1 or not rt._alone:
            return []
        prompt = self.row.prompt
        for n in (3, 2, 1):                 # the longest recent run of the value found in the prompt
            if len(written) < n:
                continue
            tail = tuple(written[-n:])
            for start in range(len(prompt) - n, -1, -1):
                if prompt[start:start + n] == tail and start + n < len(prompt):
                    return list(prompt[start + n:start + n + limit])
        return []

    def take_back(self, n: int) -> None:
        """Unfeed the last n tokens: a wrong guess and those after it."""
        row, rt = self.row, self.rt
        row.pos -= n
        rt.usage.generated_tokens -= n
        rt._c.llama_memory_seq_rm(rt._memory, row.seq, row.pos, -1)


class _Writing:
    """A Write in progress: the likeliest token its kind allows, until its stop (a token that
    holds the stop closes the value), the end token (when it has no stop) or its token limit."""

    def __init__(self, runtime: LlamaRuntime, step: Write, room: int, guesses: _Guesses):
        self.rt, self.step, self.guesses = runtime, step, guesses
        self.stop_tokens = runtime.tokenize(step.stop) if step.stop else []
        self.max_tokens = max(1, min(step.max_tokens, room - len(self.stop_tokens) - 1))
        self.masks = (runtime._mask(step.kind, step.stop, step.or_end)
                      if step.kind in _KIND_CHARS or step.stop else None)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.result: Generation | None = None
        self.ended = False

    def take(self, logits: np.ndarray, advance) -> list:
        token, closes = self._pick(logits)
        if token is None:                      # a span with nowhere left to go in its source
            self._set_result()
            return self._write_stop(advance)
        logprob = float(logits[token]) - _logsumexp(logits)
        if self.rt._is_end(token):
            self._set_result(ended=True)
            return []
        if closes:                             # e.g. '\n' or '.\n': keep what precedes the stop
            closing = self.rt._piece_texts()[token].split(self.step.stop, 1)[0]
            if closing:
                self.logprobs.append(logprob)
            self._set_result(closing=closing)
            return [(token, advance)]
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if len(self.tokens) >= self.max_tokens:
            self._set_result(hit_limit=True)
            return [] if self.ended else [(token, None)] + self._write_stop(advance)
        guessed = self.guesses.next(self.tokens, self.max_tokens - len(self.tokens) - 1)
        if not guessed:
            return [(token, advance)]
        wrong = []          # set once a guess is wrong: the logits after it are void
        checks = [self._check(guessed, j, wrong, advance) for j in range(len(guessed) + 1)]
        return list(zip([token] + guessed, checks))

    def _check(self, guessed: list[int], j: int, wrong: list, advance):
        """The callback for the logits after guess j (after the written token for j = 0): keep
        guess j + 1 if decoding picks it as a plain next token; else take back the guesses from it
        on and decide from these logits as if nothing had been guessed."""
        def check(logits, feeds):
            if wrong:
                return
            if j < len(guessed):
                token, closes = self._pick(logits)
                if (token == guessed[j] and not closes and not self.rt._is_end(token)
                        and len(self.tokens) + 1 < self.max_tokens):
                    self.tokens.append(token)
                    self.logprobs.append(float(logits[token]) - _logsumexp(logits))
                    return
                wrong.append(j)
                self.guesses.take_back(len(guessed) - j)
            advance(logits, feeds)
        return check

    def _set_result(self, ended=False, hit_limit=False, closing="") -> None:
        self.ended = ended or self.step.stop is None
        self.result = Generation(self.rt.detokenize(self.tokens) + closing, self.logprobs,
                                 hit_limit=hit_limit, ended=self.ended)

    def _write_stop(self, advance) -> list:
        if self.ended:
            return []
        return [(t, None) for t in self.stop_tokens[:-1]] + [(self.stop_tokens[-1], advance)]

    def _pick(self, logits: np.ndarray) -> tuple[int | None, bool]:
        step = self.step
        if step.kind == "span":
            return self._pick_span(logits)
        if self.masks is None:                 # free text to the end of the answer
            return int(np.argmax(logits)), False
        allowed, close = self.masks
        token = int(np.argmax(np.where(allowed, logits, -np.inf)))
        return token, bool(close[token])

    def _pick_span(self, logits: np.ndarray) -> tuple[int | None, bool]:
        """The likeliest of the top candidates that keeps the value a piece of the source."""
        source, stop, pieces = self.step.source or "", self.step.stop, self.rt._piece_texts()
        value = self.rt.detokenize(self.tokens)
        top = np.argpartition(logits, -SPAN_CANDIDATES)[-SPAN_CANDIDATES:]
        for token in top[np.argsort(-logits[top])]:
            token = int(token)
            if self.rt._is_end(token):
                if (stop is None or self.step.or_end) and value.strip():
                    return token, False
                continue
            piece = pieces[token]
            if not piece:
                continue
            if stop and stop in piece:
                if value.strip() and (value + piece.split(stop, 1)[0]).strip() in source:
                    return token, True
                continue
            candidate = (value + piece).lstrip()
            if candidate and candidate in source:
                return token, False
        return None, False
