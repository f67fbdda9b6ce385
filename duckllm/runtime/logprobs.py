"""Log-probabilities over the whole vocabulary: each output's normaliser, the log-sum-exp of its logits.

Most of duckllm's own work between decodes is here: a decision reads only the logits of its
allowed tokens, but each log-probability it reports needs an exp over every logit (128,256 for
Llama-3). So the normalisers of a decode's outputs are computed together, only for the outputs a
decoder is given, in buffers kept between decodes (on a GPU over the host's cores, idle meanwhile),
and in two passes over the logits instead of four: log(sum(exp(x))) needs no max subtracted where
no logit overflows exp (below 88.7, as a model's are), else the usual shifted form is used, and the
sum is vector adds into running sums rather than numpy's pairwise tree. Each row is computed on its
own, so its value is the same to the last bit whichever rows are beside it and whichever thread
computes it.
"""
from __future__ import annotations

import itertools
import math
import os
import threading
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TINY = 1e-30      # sum(exp(x)) below this: the largest terms may be subnormal floats; take the shifted form
LANES = 2048      # a row is summed in this many running sums (vector adds, ~60 terms each), then those pairwise


def logsumexp(x: np.ndarray) -> float:
    """log(sum(exp(x))) of any values, the largest subtracted first."""
    m = float(np.max(x))
    return m + math.log(float(np.sum(np.exp(x - m))))


def buffer_for(rows: int, width: int) -> np.ndarray:
    """Room for normalisers() of up to rows rows of width logits: zero past the width."""
    return np.zeros((rows, -(-width // LANES) * LANES), np.float32)


def normalisers(logits: np.ndarray, buffer: np.ndarray) -> list[float]:
    """The log-sum-exp of each row of (rows x vocabulary) logits, through a buffer from buffer_for():
    logsumexp()'s value to float32's rounding, each row's the same whatever rows come with it."""
    n, width = logits.shape
    exps = buffer[:n]
    with np.errstate(over="ignore"):      # an overflow takes the shifted form below
        np.exp(logits, out=exps[:, :width])
        sums = exps.reshape(n, -1, LANES).sum(axis=1).sum(axis=1)     # float32, each row on its own
    return [math.log(s) if TINY < s < math.inf else logsumexp(row) for s, row in zip(sums.tolist(), logits)]


class Output:
    """The logits after one fed token (a view of llama.cpp's buffer, valid during the callback)
    and their normaliser (computed here when not given)."""
    __slots__ = ("logits", "_normaliser")

    def __init__(self, logits: np.ndarray, normaliser: float | None = None):
        self.logits = logits
        self._normaliser = normaliser

    @property
    def normaliser(self) -> float:
        if self._normaliser is None:
            self._normaliser = normalisers(self.logits[None], buffer_for(1, len(self.logits)))[0]
        return self._normaliser

    def logprob(self, token: int) -> float:
        """log P(token) over the whole vocabulary."""
        return float(self.logits[token]) - self.normaliser

    def logprobs(self, tokens: np.ndarray) -> np.ndarray:
        """log P of each of tokens, each the float64 logprob() gives."""
        return self.logits[tokens].astype(np.float64) - self.normaliser


class Normalisers:
    """normalisers() of a decode's logits, in blocks of rows, on up to `threads` threads."""
    BLOCK = 4             # rows a thread takes at a time: 2 MB of buffer for 128,256 tokens, an L2's size
    MIN_ROWS = 8          # rows per thread below which another thread costs more than it saves

    def __init__(self, threads: int = 1):
        self.threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._local = threading.local()          # each thread's buffer

    def __call__(self, logits: np.ndarray) -> list[float]:
        n = len(logits)
        parts = max(1, min(self.threads, n // self.MIN_ROWS))
        if parts == 1:
            return self._rows(logits)
        if self._pool is None or self._pid != os.getpid():     # a forked child has none of the threads
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="duckllm-logprobs")
            self._pid = os.getpid()
        bounds = [n * k // parts for k in range(parts + 1)]
        others = [self._pool.submit(self._rows, logits[a:b]) for a, b in itertools.pairwise(bounds[1:])]
        try:
            mine = self._rows(logits[:bounds[1]])
            return mine + [value for part in others for value in part.result()]
        finally:
            futures.wait(others)      # even when interrupted: none may read the logits after the next decode

    def _rows(self, logits: np.ndarray) -> list[float]:
        width = logits.shape[1]
        if getattr(self._local, "width", None) != width:
            self._local.buffer, self._local.width = buffer_for(self.BLOCK, width), width
        return [value for start in range(0, len(logits), self.BLOCK)
                for value in normalisers(logits[start:start + self.BLOCK], self._local.buffer)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
