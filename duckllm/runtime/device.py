"""Device policy: how large a context, batch and number of rows in flight to ask of llama.cpp on
this machine, how many threads, and which settings keep a row's answer independent of its
neighbours. Pure decisions; llama_resources carries them out."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
MAX_SEQS = 256            # llama.cpp's limit on sequences in one context


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


@dataclass(frozen=True)
class Sizes:
    """What a context is made with, decided for its device."""
    n_ctx: int
    n_batch: int            # tokens in one llama_decode at most
    min_batch: int          # ... and at least (padded with throwaway tokens): CPU_MIN_BATCH or 1
    n_parallel: int         # rows in flight
    n_threads: int
    host_threads: int       # threads for duckllm's own work between decodes (logprobs.Normalisers)
    row_seqs: int           # KV sequences for rows: 1..row_seqs (0 holds the shared prefix)
    kv_cache: str           # "f16", or "bf16" for batch invariance on the CPU
    flash_attn: bool

    @property
    def scratch_seq(self) -> int:
        """The sequence that holds throwaway tokens (padding, measurements)."""
        return self.row_seqs + 1

    @property
    def n_seqs(self) -> int:
        return self.row_seqs + 2


def sizes(on_gpu: bool, n_ctx_train: int, *, n_ctx: int | None = None, n_batch: int | None = None,
          n_parallel: int | None = None, n_threads: int | None = None, batch_invariant: bool = True) -> Sizes:
    """The sizes asked for, or the device's defaults (DEFAULTS); on the CPU, batch invariance
    takes batches of at least CPU_MIN_BATCH tokens over a bf16 cache."""
    defaults = DEFAULTS["gpu" if on_gpu else "cpu"]
    n_batch = n_batch or defaults["n_batch"]
    n_parallel = max(1, n_parallel or defaults["n_parallel"])
    invariant = batch_invariant and not on_gpu
    if invariant:
        n_batch = max(n_batch, CPU_MIN_BATCH)
    n_threads = n_threads or physical_cores()
    return Sizes(n_ctx=min(n_ctx or defaults["n_ctx"], n_ctx_train), n_batch=n_batch,
                 min_batch=CPU_MIN_BATCH if invariant else 1, n_parallel=n_parallel,
                 n_threads=n_threads,
                 # a GPU leaves the host's cores idle between decodes; on the CPU llama.cpp's threads
                 # hold them (its OpenMP workers spin on after a decode): a second thread measured
                 # slower there (bench/host_time.py)
                 host_threads=n_threads if on_gpu else 1,
                 # rows of an epoch (scheduler) each take a sequence; one more holds throwaway tokens
                 row_seqs=min(MAX_SEQS - 2, 2 * n_parallel),
                 kv_cache="bf16" if invariant else "f16", flash_attn=invariant)
