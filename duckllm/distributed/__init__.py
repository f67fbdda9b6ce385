"""Past one machine: duckllm queries and duckllm columns on a Ray cluster, through Ray Data.

run_query: a row-mapping query (llm_* functions in SELECT and WHERE over read_parquet, read_csv
or read_json of one or many files) is cut into shards, row ranges of its input files. A shard's
SQL is the query with its table function narrowed to that range (a sqlglot rewrite). Workers are
Ray Data actors, each holding one DuckDB connection with duckllm (so one loaded model): a worker
runs a shard and writes DIR/part-NNNNNN.parquet under a temporary name, then renames it. A part
that exists is never computed again, so a rerun after a failure computes only the unfinished
shards; DIR/_duckllm_run.json records what the parts are of, so a different query cannot mix in.

with_columns: duckllm functions over a column of a ray.data.Dataset: each Arrow batch is a table
that DuckDB reads in place, and the SQL expressions add STRUCT columns to it.

Both answer through the same engine as a local query (batching, dedup, result cache), on each
worker's result cache ($DUCKLLM_HOME/cache.sqlite of its node) or one shared cache file.

The package by concern: query (is it row-mapping, what does it read), shards (planning and each
shard's SQL), manifest (the output folder, resumability), workers (the shard and columns workers),
ray_data (placement, Ray startup, shards on Ray Data, with_columns), run (run_query).
"""
from duckllm.distributed.manifest import MANIFEST
from duckllm.distributed.query import READERS, NotRowMapping, Query, check_row_mapping, parse
from duckllm.distributed.ray_data import Placement, placement, with_columns
from duckllm.distributed.run import RunResult, run_query
from duckllm.distributed.shards import DEFAULT_ROWS_PER_SHARD, Plan, Shard, plan, shard_sql
from duckllm.distributed.workers import ShardError

__all__ = [
    "run_query", "with_columns", "plan", "parse", "placement", "Placement", "RunResult", "Plan", "Shard", "Query",
    "shard_sql", "check_row_mapping", "ShardError", "NotRowMapping", "READERS", "MANIFEST", "DEFAULT_ROWS_PER_SHARD",
]
