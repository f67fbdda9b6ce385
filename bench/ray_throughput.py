"""What going through Ray costs: rows/s of one llm_classify query run four ways on the same rows.

  plain query        one process: duckllm.connect() and COPY (query) TO a Parquet file
  shards, no Ray     duckllm run without --ray: the same shards as below, one after another
                     in this process (the model the plain phase loaded is reused)
  ray, 1 worker      duckllm run on a local Ray cluster, one worker on all the CPUs
  ray, 2 workers     two workers, the CPUs split between them

The result cache is off, so every phase computes every row. Ray phases include starting their
workers and loading the model in each; "not computing" is the wall time less the shards' own time
per worker (planning, starting workers, loading models, waiting). "x shards" compares with the
same shards without Ray: the cost of Ray itself. "x plain" compares with one plain query, which
decodes all its rows in one call where shards decode fewer at a time. Answers are compared with
the plain query's: labels equal, and the largest confidence gap among rows with the same label
(a shard that is not whole 2048-row DuckDB vectors decodes its rows beside other rows than the
plain query does; see README). The Ray cluster's own start is timed apart: a real cluster is
started once, not per query.

    python bench/ray_throughput.py --rows 400 [--model smollm2-135m] [--rows-per-shard 50] [--cpus 2]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from _common import connect, parse, parser
from throughput import load_rows


def main():
    ap = parser(__doc__, rows=400, model="smollm2-135m", suite=None, dataset="banking77")
    ap.add_argument("--rows-per-shard", type=int, help="default: rows / 8, so 2 workers share the work")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    args = parse(ap)

    import duckdb
    import ray
    from sqlglot import exp

    from duckllm import distributed
    from duckllm.runtime.llama import physical_cores

    texts, labels = load_rows(args)
    texts = texts[:args.rows]
    work = Path(tempfile.mkdtemp(prefix="duckllm-ray-bench-"))
    duckdb.execute(f"COPY (SELECT generate_subscripts($t, 1) AS id, unnest($t) AS text) TO '{work}/in.parquet'",
                   {"t": texts})
    label_list = exp.Array(expressions=[exp.Literal.string(label) for label in labels]).sql("duckdb")
    query = f"SELECT id, llm_classify(text, {label_list}) AS r FROM read_parquet('{work}/in.parquet')"
    rows_per_shard = args.rows_per_shard or max(1, len(texts) // 8)

    started = time.perf_counter()
    con = connect(args.model, cache=False, quiet=True)
    con.execute(f"COPY ({query}) TO '{work}/plain.parquet'")
    plain_s = time.perf_counter() - started
    plain = duckdb.sql(f"SELECT id, r FROM read_parquet('{work}/plain.parquet') ORDER BY id").fetchall()
    print(f"plain query: {plain_s:.1f}s", file=sys.stderr)

    def sharded(name, n_workers, threads, **where):
        out = work / name.replace(" ", "").replace(",", "")
        busy = []
        result = distributed.run_query(query, out, model=args.model, cache=False, rows_per_shard=rows_per_shard,
                                       progress=lambda shard: busy.append(shard["seconds"]), **where)
        print(f"{name}: {result.seconds:.1f}s", file=sys.stderr)
        got = duckdb.sql(f"SELECT id, r FROM read_parquet('{out}/*.parquet') ORDER BY id").fetchall()
        return (name, n_workers, threads, result.seconds, result.seconds - sum(busy) / n_workers, result.shards,
                *compare(got))

    def compare(got):
        same = [(a[1], b[1]) for a, b in zip(got, plain) if a[1]["label"] == b[1]["label"]]
        gap = max(abs(a["confidence"] - b["confidence"]) for a, b in same)
        return f"{len(same)}/{len(plain)}", f"{gap:.3f}"

    table = [("plain query", 1, physical_cores(), plain_s, None, 1, "-", "-"),
             sharded("shards, no Ray", 1, physical_cores())]
    started = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    ray_start_s = time.perf_counter() - started
    for workers in (1, 2):
        table.append(sharded(f"ray, {workers} worker{'s' * (workers > 1)}", workers,
                             distributed.placement(workers).threads, ray=True, workers=workers))
    ray.shutdown()

    print(f"model {args.model}, {len(texts)} rows of {args.dataset}, {len(labels)} labels, "
          f"{rows_per_shard} rows per shard, {args.cpus} CPUs; Ray cluster start {ray_start_s:.1f}s (not counted)")
    print()
    print("| phase | workers | threads each | seconds | not computing, s | rows/s | x plain | x shards | parts "
          "| labels = plain | max confidence gap, same label |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    shards_s = table[1][3]
    for name, workers, threads, seconds, idle, parts, same, gap in table:
        print(f"| {name} | {workers} | {threads} | {seconds:.1f} | {'' if idle is None else f'{idle:.1f}'} | "
              f"{len(texts) / seconds:.2f} | {plain_s / seconds:.2f} | {shards_s / seconds:.2f} | {parts} | {same} "
              f"| {gap} |")

if __name__ == "__main__":
    main()
