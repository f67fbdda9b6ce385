"""The Ray side: where workers go (placement), starting or joining a cluster, a run's shards on
Ray Data actors (run_shards), and duckllm columns on a ray.data.Dataset (with_columns).

with_columns: duckllm functions over a column of a ray.data.Dataset: each Arrow batch is a table
that DuckDB reads in place, and the SQL expressions add STRUCT columns to it."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from duckllm.distributed.query import columns_sql
from duckllm.distributed.shards import Plan, Shard
from duckllm.distributed.workers import (
    ColumnsWorker,
    ShardError,
    ShardWorker,
    cache_setting,
)
from duckllm.errors import ArgumentError, DuckLLMError


@dataclass
class Placement:
    """How many workers, what each asks of Ray, and how many llama.cpp threads each runs."""
    workers: int
    ray_args: dict = field(default_factory=dict)
    threads: int | None = None


def placement(workers: int | None = None, gpus_per_worker: float | None = None,
              cpus_per_worker: int | None = None) -> Placement:
    """One worker per GPU when the cluster has GPUs (each asks Ray for 1 CPU beside its GPUs);
    else one per node, running llama.cpp on that node's CPUs (split between workers when more than
    one lands on a node). cpus_per_worker, when given, is both what a worker asks of Ray and its
    llama.cpp threads."""
    import ray
    total_gpus = ray.cluster_resources().get("GPU", 0)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if gpus_per_worker is None:
        gpus_per_worker = 1 if total_gpus else 0
    if gpus_per_worker:
        if total_gpus < gpus_per_worker:
            raise ArgumentError(f"the Ray cluster has {total_gpus:g} GPUs, fewer than --gpus-per-worker "
                                f"{gpus_per_worker:g}; lower it, or pass 0 to run on CPUs")
        count = workers or int(total_gpus // gpus_per_worker)
        return Placement(count, {"num_gpus": gpus_per_worker, "num_cpus": cpus_per_worker or 1}, cpus_per_worker)
    if not nodes:
        raise ArgumentError("the Ray cluster has no node with CPUs; start one (ray start --address ...)")
    count = workers or len(nodes)
    per_node = math.ceil(count / len(nodes))
    node_cpus = int(min(n["CPU"] for n in nodes))
    threads = cpus_per_worker or max(1, node_cpus // per_node)
    # The workers of a node ask for all its CPUs but one: Ray then places no more than per_node
    # workers on a node, and Ray Data's readers and writers still get a CPU (with none, a
    # pipeline that reads files waits forever).
    reserve = cpus_per_worker or round(max(0, node_cpus - 1) / per_node, 3)
    return Placement(count, {"num_cpus": reserve}, threads)


def start(address: str | None):
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise DuckLLMError("Ray is not installed; pip install 'duckllm[ray]' (ray[data]), "
                           "or leave --ray out to run in this process") from None
    if not ray.is_initialized():
        ray.init(address=None if address in (None, "", "local") else address)
        return ray, True
    return ray, False


@contextlib.contextmanager
def shard_context():
    """Ray Data settings for duckllm run: every worker up (model loaded) before the first shard,
    so shards spread over all of them; no progress bars, duckllm run reports each part itself."""
    import ray.data
    context = ray.data.DataContext.get_current()
    names = ("enable_progress_bars", "print_on_execution_start", "wait_for_min_actors_s")
    saved = [getattr(context, name) for name in names]
    # a first start may fetch the model on each node: minutes for a large one
    for name, value in zip(names, (False, False, 3600)):
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, saved):
            setattr(context, name, value)


def run_shards(plan_: Plan, todo: list[Shard], output: Path, *, address: str | None, model: str | None,
               cache: str | bool | None, workers: int | None, gpus_per_worker: float | None,
               cpus_per_worker: int | None, engine_factory: Callable[[], object] | None,
               finished: Callable[[dict], None]) -> None:
    """The shards to do, on Ray Data actors (shard workers), placed as placement() says;
    finished(summary) for each shard as it comes back. A failure keeps the parts already written
    and says how to finish the rest."""
    ray_, started_here = start(address)
    where = placement(workers, gpus_per_worker, cpus_per_worker)
    items = [{"index": s.index, "file_index": s.file_index, "offset": s.offset, "rows": s.rows} for s in todo]
    with shard_context():
        shards = ray_.data.from_items(items, override_num_blocks=len(items))
        done = shards.map_batches(
            ShardWorker, batch_size=1, batch_format="numpy",
            fn_constructor_args=(plan_.query.sql, plan_.files, plan_.exposed, str(output), model, cache,
                                 where.threads, engine_factory),
            # a shard goes only to an idle worker: the load spreads, and a lost worker takes
            # one shard with it, not a queue
            compute=ray_.data.ActorPoolStrategy(size=min(where.workers, len(items)),
                                                max_tasks_in_flight_per_actor=1),
            **where.ray_args)
        try:
            for row in done.iter_rows():
                finished(dict(row))
        except KeyboardInterrupt:
            if started_here:   # a cluster of our own: stop its processes, or some outlive us
                ray_.shutdown()
            raise
        except Exception as e:
            there = sum((output / s.part).exists() for s in plan_.shards)
            raise ShardError(f"{_root_cause(e)}\n{there} of {len(plan_.shards)} parts are done and kept in "
                             f"{output}; fix the cause and run the same command again: only the "
                             f"{len(plan_.shards) - there} unfinished shards will run") from None


def _root_cause(error: BaseException) -> str:
    """Ray wraps a worker's exception in its own; keep duckllm's message where there is one."""
    seen = error
    while seen is not None:
        if isinstance(seen, ShardError):
            return str(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__
    text = str(error)
    marker = "ShardError: "
    return text.rsplit(marker, 1)[1].strip() if marker in text else text.strip().splitlines()[-1]


def with_columns(ds, columns: dict[str, str], *, model: str | None = None, cache: str | Path | bool | None = None,
                 workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_worker: int | None = None, batch_size: int = 2048,
                 engine_factory: Callable[[], object] | None = None):
    """ds (a ray.data.Dataset) with a column added for each {name: SQL expression}, evaluated by
    DuckDB with duckllm on each Arrow batch, e.g.
    with_columns(ds, {"r": "llm_classify(text, ['refund', 'delivery'])"}) adds the STRUCT column r.
    Lazy, like any Ray Data transform; workers and cache as in run_query."""
    columns_sql(columns)   # a malformed expression fails here, not on every worker
    import ray.data
    where = placement(workers, gpus_per_worker, cpus_per_worker)
    return ds.map_batches(ColumnsWorker, batch_size=batch_size, batch_format="pyarrow",
                          fn_constructor_args=(dict(columns), model, cache_setting(cache), where.threads,
                                               engine_factory),
                          compute=ray.data.ActorPoolStrategy(size=where.workers), **where.ray_args)
