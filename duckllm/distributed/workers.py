"""Workers: each holds one DuckDB connection with duckllm (so one loaded model) for its lifetime,
in this process or as a Ray Data actor. A shard worker computes shards into the output folder; a
columns worker adds duckllm columns to Arrow batches."""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import duckdb
from sqlglot import exp

from duckllm.distributed.query import absolute, columns_sql
from duckllm.distributed.shards import Shard, shard_sql
from duckllm.errors import DuckLLMError
from duckllm.settings import Settings


class ShardError(DuckLLMError):
    """A shard could not be computed; the parts already written are kept."""


def cache_setting(cache: str | Path | bool | None) -> str | bool | None:
    """None: each worker's own cache; False or 'off': none; else the path of one shared file."""
    if isinstance(cache, (str, Path)):
        return False if str(cache).lower() == "off" else absolute(str(cache))
    return cache


@contextlib.contextmanager
def file_lock(path: Path):
    """One fetch of a model per node when several workers start there at once."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _connection(model: str | None, cache: str | bool | None, threads: int | None,
                engine_factory: Callable[[], object] | None, settings: Settings | None):
    """The worker's connection and the engine behind it, on settings with the llama.cpp threads
    its placement gives it. settings None: a Ray worker's process is an edge of its own, and its
    settings are its node's environment (DUCKLLM_HOME, ...)."""
    import duckllm
    from duckllm.sql import engine_of, register
    settings = (settings or Settings.from_env()).replace(threads=threads)
    if engine_factory is not None:
        con = register(duckdb.connect(), model=model, cache=cache, engine=engine_factory())
    else:
        from duckllm.store import ModelStore
        models = ModelStore(settings.home)
        with file_lock(models.models_dir / ".fetch.lock"):     # one fetch per node
            models.resolve(model)
        con = duckllm.connect(model=model, cache=cache, settings=settings)
    return con, engine_of(con)


class Worker:
    """One DuckDB connection with duckllm, its model loaded once, for the worker's lifetime."""

    def __init__(self, model: str | None, cache: str | bool | None, threads: int | None,
                 engine_factory: Callable[[], object] | None, settings: Settings | None = None):
        self.con, engine = _connection(model, cache, threads, engine_factory, settings)
        self.con.execute("SET enable_progress_bar = false")
        self.device = engine.runtime(model).describe().get("device", "?")   # load now, once
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        self._warn_if_gpu_unused()

    def _warn_if_gpu_unused(self):
        try:
            import ray
            gpus = ray.get_gpu_ids() if ray.is_initialized() else []
        except ImportError:
            gpus = []
        if gpus and self.device != "gpu":
            print(f"duckllm: warning: worker {self.where} holds GPU {gpus} but runs on {self.device}: "
                  f"llama-cpp-python was built without CUDA; reinstall it with CMAKE_ARGS=\"-DGGML_CUDA=on\" "
                  f"(README, GPU)", file=sys.stderr)

    def _counters(self) -> dict:
        from duckllm.engine.stats import STATS
        return STATS.snapshot()


class ShardWorker(Worker):
    """Computes shards of one plan into the output folder."""

    def __init__(self, sql: str, files: tuple[str, ...], exposed: tuple[str, ...], output: str, model, cache,
                 threads, engine_factory, settings: Settings | None = None):
        self.sql, self.files, self.exposed, self.output = sql, tuple(files), tuple(exposed), Path(output)
        if not self.output.is_dir():
            raise ShardError(f"the output folder {self.output} is not there on {socket.gethostname()}: every "
                             f"worker writes its parts there, so on several machines give a folder they all "
                             f"mount at the same path (NFS, a mounted bucket)")
        super().__init__(model, cache, threads, engine_factory, settings)

    def run(self, shard: Shard) -> dict:
        final = self.output / shard.part
        summary = {"shard": shard.index, "part": shard.part, "input_rows": shard.rows, "worker": self.where,
                   "device": self.device}
        before, started = self._counters(), time.perf_counter()
        skipped = final.exists()   # another worker (a retried task) finished it first
        temporary = self.output / f".{shard.part}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            if not skipped:
                self.con.execute(f"COPY ({shard_sql(self.sql, self.files, shard, self.exposed)}) TO "
                                 f"{exp.Literal.string(str(temporary)).sql('duckdb')} (FORMAT parquet)")
                os.replace(temporary, final)   # a part is there whole, or not at all
        except Exception as e:
            temporary.unlink(missing_ok=True)
            raise ShardError(f"{shard.part} (rows {shard.offset}-{shard.offset + shard.rows - 1} of "
                             f"{self.files[shard.file_index]}) failed on {self.where}: {e}") from None
        after = self._counters()
        rows = self.con.execute("SELECT count(*) FROM read_parquet(?)", [str(final)]).fetchall()[0][0]
        return summary | {"rows": rows, "model_rows": after["model_rows"] - before["model_rows"],
                          "cache_hits": after["cache_hits"] - before["cache_hits"],
                          "seconds": time.perf_counter() - started, "skipped": skipped}

    def __call__(self, batch: dict) -> dict:
        """Ray Data: a batch of shard descriptions in, one summary per shard out."""
        results = [self.run(Shard(*(int(batch[k][i]) for k in ("index", "file_index", "offset", "rows"))))
                   for i in range(len(batch["index"]))]
        return {k: [r[k] for r in results] for k in results[0]}


class ColumnsWorker(Worker):
    """Adds duckllm columns to Arrow batches: DuckDB reads the batch in place."""

    def __init__(self, columns: dict[str, str], model, cache, threads, engine_factory):
        super().__init__(model, cache, threads, engine_factory)
        self.sql = columns_sql(columns)

    def __call__(self, batch):
        self.con.register("__duckllm_batch", batch)
        try:
            return self.con.sql(self.sql).to_arrow_table()
        finally:
            self.con.unregister("__duckllm_batch")
