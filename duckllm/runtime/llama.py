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
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import cancel
from ..errors import ArgumentError, ModelError
from ..prompt_format import Format, detect
from . import Choice, Generation, Prompt, Usage

PREFIX_SEQ = 0


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
    """One row in flight: its KV sequence, next position, and what it has answered so far."""
    index: int
    seq: int
    pos: int
    started: bool = False                 # its prompt has been fed
    token_logprobs: list[float] = field(default_factory=list)   # the answer's tokens, not its end
    choice_logprob: float = 0.0
    node: dict | None = None              # choose: current trie node
    score_rest: bool = True               # choose: score an option's tokens after it is determined
    tokens: list[int] = field(default_factory=list)  # generate: tokens produced
    limit: int = 0
    truncated: bool = False
    cells: int = 0                        # KV cells reserved: prompt + longest answer
    done: bool = False


class LlamaRuntime:
    def __init__(self, path: str | Path, fmt: Format | None = None, *, n_ctx: int = 4096, n_batch: int = 512,
                 n_parallel: int = 16, n_threads: int | None = None, n_gpu_layers: int | None = None):
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
        n_ctx = min(n_ctx, llama_cpp.llama_model_n_ctx_train(self._model))
        self.n_parallel = max(1, n_parallel)
        self.n_threads = n_threads or physical_cores()

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = self.n_parallel + 1
        cparams.kv_unified = True          # rows share the prefix's cells instead of copying them
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path.name}; "
                             f"set DUCKLLM_CONTEXT lower or free memory")
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch = n_batch
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, self.n_parallel + 1)
        self._prefix: list[int] = []
        self._end_tokens = self.tokenize(self.format.end, special=True)

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
            "system": self._c.llama_print_system_info().decode(errors="replace").strip(),
        }

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

    def detokenize(self, tokens: Sequence[int]) -> str:
        out = bytearray()
        buf = ctypes.create_string_buffer(256)
        for token in tokens:
            n = self._c.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            out += buf.raw[:max(n, 0)]
        return out.decode("utf-8", errors="replace")

    def _is_end(self, token: int) -> bool:
        return token in self._end_tokens or bool(self._c.llama_vocab_is_eog(self._vocab, token))

    # ---- requests --------------------------------------------------------------------------

    def choose(self, prompt: Prompt, texts: Sequence[str], options: Sequence[str],
               on_done: Callable[[int, Choice], None] | None = None, score_rest: bool = True) -> list[Choice]:
        """score_rest=False stops at the token that determines the option: its choice_logprob is
        complete, its token_logprobs cover only the tokens decoded."""
        paths = [self.tokenize(option) + self._end_tokens for option in options]
        trie = _trie(paths)

        def start(row: _Row) -> None:
            row.node, row.score_rest = trie, score_rest

        def finish(row: _Row) -> Choice:
            return Choice(index=row.node["index"], token_logprobs=row.token_logprobs,
                          choice_logprob=row.choice_logprob, truncated=row.truncated)
        with self._lock:
            return self._run(prompt, texts, lambda n: max(len(p) for p in paths),
                             start, self._step_choose, finish, on_done)

    def generate(self, prompt: Prompt, texts: Sequence[str], max_tokens: int, per_input_token: float = 0.0,
                 on_done: Callable[[int, Generation], None] | None = None) -> list[Generation]:
        def finish(row: _Row) -> Generation:
            ended = bool(row.tokens) and self._is_end(row.tokens[-1])
            return Generation(text=self.detokenize(row.tokens[:-1] if ended else row.tokens),
                              token_logprobs=row.token_logprobs, truncated=row.truncated, hit_limit=not ended)
        with self._lock:
            return self._run(prompt, texts, lambda n: max_tokens + math.ceil(per_input_token * n),
                             None, self._step_generate, finish, on_done, per_input_token)

    # ---- scheduling ------------------------------------------------------------------------

    def _run(self, prompt: Prompt, texts, answer_limit, start, step, finish, on_done, per_input=0.0) -> list:
        """Continuous batching: the shared prefix is evaluated once (sequence 0); rows take free
        sequences as earlier rows finish, so one llama_decode carries new rows' prompts and the
        answer tokens of rows in flight together."""
        shared = self.tokenize(prompt.shared, add_bos=self._add_bos(), special=True)
        tail = self.tokenize(prompt.tail, special=True)
        self._ensure_prefix(shared)
        room = self.n_ctx - len(shared)
        results: list = [None] * len(texts)
        pending = deque(range(len(texts)))
        free_seqs = list(range(self.n_parallel, 0, -1))
        in_flight: dict[int, _Row] = {}
        used = 0                    # KV cells reserved by the rows in flight
        feeds: list[tuple[_Row, list[int]]] = []
        try:
            while pending or feeds:
                cancel.check()
                while pending and free_seqs:
                    i = pending[0]
                    tokens, limit, truncated = self._fit(self.tokenize(texts[i]), tail, answer_limit, per_input, room)
                    if in_flight and used + len(tokens) + limit > room:
                        break       # wait for rows in flight to free their cells
                    pending.popleft()
                    row = _Row(index=i, seq=free_seqs.pop(), pos=len(shared), limit=limit,
                               truncated=truncated, cells=len(tokens) + limit)
                    if start:
                        start(row)
                    self._c.llama_memory_seq_rm(self._memory, row.seq, -1, -1)
                    self._c.llama_memory_seq_cp(self._memory, PREFIX_SEQ, row.seq, -1, -1)
                    in_flight[row.seq] = row
                    used += row.cells
                    feeds.append((row, tokens))
                    self.usage.prompt_tokens += len(tokens)
                items, wanted_by = [], []
                for row, tokens in feeds:
                    if row.started:
                        self.usage.generated_tokens += len(tokens)
                    row.started = True
                    for j, token in enumerate(tokens):
                        want = row.done or j == len(tokens) - 1   # done rows: score every fed token
                        items.append((token, row.pos + j, (row.seq,), want))
                        if want:
                            wanted_by.append(row)
                    row.pos += len(tokens)
                fed = [row for row, _ in feeds]
                feeds = []

                def observe(row: _Row, logits: np.ndarray) -> None:
                    if row.done:    # choose: scoring the determined rest of an option
                        token = row.node["path"][len(row.token_logprobs)]
                        row.token_logprobs.append(float(logits[token]) - _logsumexp(logits))
                    else:
                        step(row, logits, feeds)
                self._decode(items, wanted_by, observe)
                for row in fed:
                    if row.done and not any(r is row for r, _ in feeds):
                        results[row.index] = finish(row)
                        if on_done:
                            on_done(row.index, results[row.index])
                        del in_flight[row.seq]
                        used -= row.cells
                        free_seqs.append(row.seq)
                        self._c.llama_memory_seq_rm(self._memory, row.seq, -1, -1)
        finally:
            for seq in in_flight:   # interrupted: leave no cells behind
                self._c.llama_memory_seq_rm(self._memory, seq, -1, -1)
        return results

    def _fit(self, text_tokens, tail, answer_limit, per_input, room):
        """Cut a row's text so text + tail + answer fit the room left after the prefix."""
        fixed = answer_limit(0)
        budget = int((room - len(tail) - fixed) / (1 + per_input))
        if budget < 1:
            raise ArgumentError(f"the instructions and labels take {self.n_ctx - room} of the model's "
                                f"{self.n_ctx} context tokens, leaving no room for the text; shorten them "
                                f"or set DUCKLLM_CONTEXT higher")
        truncated = len(text_tokens) > budget
        text_tokens = text_tokens[:budget]
        return text_tokens + tail, answer_limit(len(text_tokens)), truncated

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

    def _step_choose(self, row: _Row, logits: np.ndarray, feeds) -> None:
        """Walk the option trie: pick the likeliest allowed token where options diverge; once one
        option is left, feed its remaining tokens in one go, only to score them. The end token
        decides between an option and a longer one it prefixes, but is not part of the answer."""
        children = row.node["children"]
        allowed = np.fromiter(children, dtype=np.int64)
        scores = logits[allowed]
        pick = int(allowed[np.argmax(scores)])
        row.choice_logprob += float(logits[pick]) - _logsumexp(scores)
        row.node = children[pick]
        if pick not in self._end_tokens:
            row.token_logprobs.append(float(logits[pick]) - _logsumexp(logits))
        if "index" not in row.node:       # options still diverge below: decode the next token
            feeds.append((row, [pick]))
            return
        row.done = True                   # determined: one option left below this node
        rest = row.node["path"][len(row.token_logprobs):-1]
        if rest and row.score_rest:       # feed all but the last token, only to score the rest
            feeds.append((row, [pick] + rest[:-1]))

    def _step_generate(self, row: _Row, logits: np.ndarray, feeds) -> None:
        token = int(np.argmax(logits))
        row.tokens.append(token)
        if self._is_end(token):
            row.done = True
            return
        row.token_logprobs.append(float(logits[token]) - _logsumexp(logits))
        if len(row.tokens) >= row.limit:
            row.done = True
        else:
            feeds.append((row, [token]))

    # ---- llama_decode ----------------------------------------------------------------------

    def _decode(self, items, owners=(), observe=None) -> None:
        """Decode (token, pos, seq_ids, want_logits) items in chunks of n_batch. For each item
        that wants logits, in order, call observe(owner, logits): the logits are llama.cpp's own
        buffer, valid only during the call, so no vocabulary-sized copy is kept."""
        b = self._batch
        owners = iter(owners)
        for start in range(0, len(items), self.n_batch):
            chunk = items[start:start + self.n_batch]
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
            if rc != 0:
                raise ModelError(f"llama_decode failed with code {rc} (the KV cache is full or the "
                                 f"input is invalid); set DUCKLLM_CONTEXT higher or DUCKLLM_PARALLEL lower")
            for i in wanted:
                logits = np.ctypeslib.as_array(self._c.llama_get_logits_ith(self._ctx, i), shape=(self.n_vocab,))
                observe(next(owners), logits)


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + math.log(float(np.sum(np.exp(x - m))))


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
