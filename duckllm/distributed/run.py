"""duckllm run: a row-mapping query computed shard by shard into output/part-NNNNNN.parquet, in
this process or by workers on a Ray cluster (through Ray Data), resumable: a rerun computes only
the parts not there yet."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from duckllm import store
from duckllm.distributed import ray_data
from duckllm.distributed.manifest import prepare_output
from duckllm.distributed.query import absolute
from duckllm.distributed.shards import DEFAULT_ROWS_PER_SHARD, plan
from duckllm.distributed.workers import ShardWorker, cache_setting
from duckllm.settings import Settings
from duckllm.store import catalog


@dataclass
class RunResult:
    output: Path
    shards: int
    computed: int
    skipped: int           # parts already there from an earlier run
    rows: int              # output rows of the parts computed now
    model_rows: int
    cache_hits: int
    seconds: float
    workers: list[str] = field(default_factory=list)

    def read_back(self) -> str:
        return f"SELECT * FROM read_parquet('{self.output}/*.parquet')"


def run_query(sql: str, output: str | Path, *, ray: bool = False, address: str | None = None,
              model: str | None = None, cache: str | Path | bool | None = None, workers: int | None = None,
              gpus_per_worker: float | None = None, cpus_per_worker: int | None = None,
              rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, progress: Callable[[dict], None] | None = None,
              engine_factory: Callable[[], object] | None = None, settings: Settings | None = None) -> RunResult:
    """Run a row-mapping query shard by shard into output/part-NNNNNN.parquet.

    ray: on a Ray cluster (address: 'auto', 'ray://host:10001', or None for a local one or the one
    already initialised), one worker per GPU or per node; else shard after shard in this process.
    cache: None, each worker's $DUCKLLM_HOME cache; a path, one SQLite file all workers share (on
    one machine: SQLite's WAL needs a local disk); False, no cache.
    progress: called with each finished shard's summary.
    engine_factory: builds each worker's Engine (tests give a fake runtime); default duckllm's.
    settings: an in-process run's (default: the environment's); a Ray worker's are its own node's
    environment, with the threads its placement gives it.
    """
    started = time.perf_counter()
    output, cache = Path(absolute(str(output))), cache_setting(cache)
    plan_ = plan(sql, output, model, rows_per_shard)
    if model and not store.is_path(model):
        catalog.get(model)   # a misspelt name fails here; each worker fetches the file on its own node
    todo = prepare_output(output, plan_)
    summaries: list[dict] = []

    def finished(summary: dict) -> None:
        summaries.append(summary)
        if progress:
            progress(summary | {"done": len(summaries), "todo": len(todo), "total": len(plan_.shards)})

    if todo and not ray:
        worker = ShardWorker(plan_.query.sql, plan_.files, plan_.exposed, str(output), model, cache, None,
                             engine_factory, settings or Settings.from_env())
        for shard in todo:
            finished(worker.run(shard))
    elif todo:
        ray_data.run_shards(plan_, todo, output, address=address, model=model, cache=cache, workers=workers,
                            gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                            engine_factory=engine_factory, finished=finished)
    computed = [s for s in summaries if not s.get("skipped")]
    return RunResult(output, len(plan_.shards), len(computed), len(plan_.shards) - len(computed),
                     sum(s["rows"] for s in computed), sum(s["model_rows"] for s in computed),
                     sum(s["cache_hits"] for s in computed), time.perf_counter() - started,
                     sorted({s["worker"] for s in computed}))

