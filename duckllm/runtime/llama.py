"""A Runtime over llama.cpp (llama-cpp-python's raw C bindings).

LlamaRuntime composes the layers: device policy (device.py) sizes a context; the resources
(llama_resources.py) load the model and own the context and batch; the scheduler (scheduler.py)
runs the rows' answer programs on them, their decisions made by the decoders (decoders.py) and
their log-probabilities normalised over the vocabulary, all rows of a decode together (logprobs.py).

llama.cpp releases the GIL and a context is not thread-safe, so every public method holds the
runtime's lock: concurrent callers (DuckDB runs UDFs on several threads) queue.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Sequence

from duckllm.prompt_format import Format, detect
from duckllm.runtime import (
    Answer,
    Choice,
    Generation,
    Pick,
    Program,
    Prompt,
    Text,
    Usage,
    Write,
    answer_bound,
    single,
)
from duckllm.runtime import llama_resources as resources
from duckllm.runtime.device import DEFAULTS, physical_cores, sizes  # noqa: F401  (callers import them from here)
from duckllm.runtime.scheduler import Scheduler


class LlamaRuntime:
    def __init__(self, path: str | Path, fmt: Format | None = None, *, n_ctx: int | None = None,
                 n_batch: int | None = None, n_parallel: int | None = None, n_threads: int | None = None,
                 n_gpu_layers: int | None = None, batch_invariant: bool = True, verbose: bool = False,
                 prefix_store=None):
        """n_ctx, n_batch and n_parallel default by device (device.DEFAULTS); verbose keeps
        llama.cpp's own logs on stderr; prefix_store: a runtime.prefix_store.PrefixStore that keeps
        shared prefixes' KV states on disk, or None."""
        resources.start(verbose)
        self.path = Path(path)
        self.usage = Usage()
        self._lock = threading.Lock()
        gpu = resources.gpu_offload_supported()
        asked_layers = (999 if gpu else 0) if n_gpu_layers is None else n_gpu_layers
        self.model = resources.Model(self.path, asked_layers)
        try:
            self.format = fmt or detect(self.model.chat_template())
            self.vocab = resources.Vocab(self.model, self.format.end)
            self.n_layer = self.model.n_layer
            self.n_gpu_layers = min(asked_layers, self.n_layer + 1) if gpu else 0
            self.sizes = sizes(bool(self.n_gpu_layers), self.model.n_ctx_train, n_ctx=n_ctx, n_batch=n_batch,
                               n_parallel=n_parallel, n_threads=n_threads, batch_invariant=batch_invariant)
            self.context = resources.Context(self.model, self.sizes)
        except BaseException:
            self.model.close()
            raise
        self.batch = resources.Batch(self.sizes.n_batch)
        self.scheduler = Scheduler(self.context, self.batch, self.vocab, self.sizes, self.usage)
        if prefix_store is not None:     # keyed by what shapes a state besides the model, tokens and build
            self.scheduler.prefix_states = prefix_store.bind(
                self.context, resources.llama_cpp, n_ctx=self.n_ctx, n_batch=self.n_batch,
                min_batch=self.sizes.min_batch, kv_cache=self.sizes.kv_cache, n_gpu_layers=self.n_gpu_layers)

    # ---- sizes and resources ---------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx

    @property
    def n_batch(self) -> int:
        return self.sizes.n_batch

    @property
    def n_parallel(self) -> int:
        return self.sizes.n_parallel

    @property
    def n_threads(self) -> int:
        return self.sizes.n_threads

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_tokens

    @property
    def prefix_tokens(self) -> int:
        """Tokens of the shared prompt held now (the last call's)."""
        return len(self.scheduler.prefix)

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None or getattr(self, "context", None) is None:
            return
        with lock:
            self.scheduler.close()
            self.context.close()
            self.model.close()
            self.context = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def describe(self) -> dict:
        s = self.sizes
        return {
            "model": self.path.name,
            "device": "gpu" if self.n_gpu_layers else "cpu",
            "gpu_layers_offloaded": self.n_gpu_layers,
            "layers": self.n_layer,
            "threads": s.n_threads,
            "context": self.n_ctx,
            "parallel_rows": s.n_parallel,
            "batch_tokens": f"{s.min_batch} to {s.n_batch}" + (" (batch-invariant)" if s.min_batch > 1 else ""),
            "kv_cache": s.kv_cache,
            "system": resources.system_info(),
        }

    def prompt_speed(self, n_tokens: int = 256, after_prefix: bool = False) -> float:
        """Prompt-eval tokens per second: one batch of n_tokens in a scratch sequence, fresh or
        after the shared prefix held now (each token then attends over it, as a row's do)."""
        with self._lock:
            tokens = self.vocab.tokenize("The quick brown fox jumps over the lazy dog. " * n_tokens)[:n_tokens]
            return len(tokens) / self.scheduler.time_prompt(tokens, after_prefix)

    # ---- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.vocab.tokenize(text, add_bos=add_bos, special=special)

    def tokenize_prompt(self, text: Text, *, add_bos: bool = False) -> list[int]:
        return self.vocab.tokenize_prompt(text, add_bos=add_bos)

    def prefix_ready(self, prompt: Prompt) -> bool:
        return self.scheduler.prefix_ready(self.vocab.tokenize_prompt(prompt.shared, add_bos=self.vocab.add_bos))

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return self.vocab.detokenize(tokens, special)

    # ---- requests --------------------------------------------------------------------------

    def run(self, prompt: Prompt, texts: Sequence[str], program: Callable[[int, int], Program],
            answer_tokens: Callable[[int], int], on_done: Callable[[int, Answer], None] | None = None,
            row_prefixes: Sequence[Text] | None = None) -> list[Answer]:
        with self._lock:
            return self.scheduler.run(prompt, texts, program, answer_tokens, on_done, row_prefixes)

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
