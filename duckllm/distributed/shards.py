"""Shards: row ranges of the query's input files, and each shard's SQL (the query with its file
reader narrowed to that range, a sqlglot rewrite)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import sqlglot
from sqlglot import exp

from duckllm.distributed.query import (
    Query,
    absolute,
    from_clause,
    parse,
    path_argument,
    reader,
)
from duckllm.errors import ArgumentError

VIRTUAL_COLUMNS = ("filename", "file_row_number")   # file_index is the shards' own
_STAR_EXCEPT = "except_" if "except_" in exp.Star.arg_types else "except"
# A multiple of DuckDB's 2048-row vector: over Parquet (row groups of 122880 rows from DuckDB, 1Mi
# from pyarrow) a shard is then made of the same vectors the single query hands the functions,
# so llama.cpp decodes the same rows together and the answers are the same to the last digit.
DEFAULT_ROWS_PER_SHARD = 8192


@dataclass(frozen=True)
class Shard:
    index: int          # position in input order; names the part
    file_index: int     # which file of the plan's list
    offset: int         # first row of the file in this shard
    rows: int

    @property
    def part(self) -> str:
        return f"part-{self.index:06d}.parquet"


@dataclass(frozen=True)
class Plan:
    query: Query
    model: str | None
    files: tuple[str, ...]          # every input file, in the order DuckDB reads them
    file_rows: tuple[int, ...]
    rows_per_shard: int
    shards: tuple[Shard, ...]
    exposed: tuple[str, ...] = ()   # virtual columns the query reads

    def manifest(self) -> dict:
        return {"query": self.query.sql, "model": self.model, "files": list(self.files),
                "file_rows": list(self.file_rows), "rows_per_shard": self.rows_per_shard}


def _with_files(sql: str, files: tuple[str, ...]) -> exp.Select:
    """The query with its reader's path replaced by the explicit file list: every shard then reads
    the same files in the same order, even if a glob would match new files meanwhile."""
    select = sqlglot.parse_one(sql, read="duckdb")
    path_argument(reader(select)).replace(exp.Array(expressions=[exp.Literal.string(f) for f in files]))
    return select


def shard_sql(sql: str, files: tuple[str, ...], shard: Shard, exposed: tuple[str, ...] = ()) -> str:
    """The query over one shard: its reader becomes a subquery of that file's row range.
    file_index is DuckDB's virtual column (not in *); with the input order kept (DuckDB's default),
    LIMIT/OFFSET over one file's rows is a stable row range. Parquet skips to the range; CSV and
    JSON are read from the file's start. The virtual columns the query reads (exposed: filename,
    file_row_number) pass through the subquery as real ones, so every * leaves them out again."""
    select = _with_files(sql, files)
    if exposed:
        excluded = [exp.column(name) for name in exposed]
        for star in select.walk(prune=lambda n: isinstance(n, exp.Query) and n is not select):
            if isinstance(star, exp.Star):
                star.set(_STAR_EXCEPT, list(star.args.get(_STAR_EXCEPT) or []) + [c.copy() for c in excluded])
    table = from_clause(select).this
    rows = (exp.select("*", *[exp.column(name) for name in exposed]).from_(exp.Table(this=table.this.copy()))
            .where(exp.EQ(this=exp.column("file_index"), expression=exp.Literal.number(shard.file_index)))
            .limit(shard.rows).offset(shard.offset))
    table.replace(exp.Subquery(this=rows, alias=table.args.get("alias")))
    return select.sql("duckdb")


def _virtual_columns_read(sql: str, real: list[str]) -> tuple[str, ...]:
    """DuckDB's virtual file columns the query names, unless the input has a real one so named."""
    names = {c.name.lower() for c in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Column)}
    return tuple(v for v in VIRTUAL_COLUMNS if v in names and v not in {r.lower() for r in real})


def _expand(con: duckdb.DuckDBPyConnection, paths: tuple[str, ...]) -> tuple[str, ...]:
    """Globs expanded as the readers expand them (glob() lists files in the same order)."""
    files: list[str] = []
    for path in map(absolute, paths):
        if any(c in path for c in "*?["):
            matched = [r[0] for r in con.execute("SELECT file FROM glob(?)", [path]).fetchall()]
            if not matched:
                raise ArgumentError(f"no file matches {path!r}; check the path (workers read the same path)")
            files += matched
        else:
            files.append(path)
    return tuple(files)


def plan(sql: str, output: str | Path = "DIR", model: str | None = None,
         rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> Plan:
    """Check the query, list its files and their rows, and cut them into shards of rows_per_shard."""
    if rows_per_shard < 1:
        raise ArgumentError(f"rows_per_shard must be at least 1, not {rows_per_shard}")
    query = parse(sql, str(output))
    from duckllm.sql import register
    con = register(duckdb.connect(), model=model)   # binds the llm_* macros; loads no model
    files = _expand(con, query.paths)
    source = reader(_with_files(query.sql, files)).sql("duckdb")
    try:
        columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
        if "file_index" in columns:
            raise ArgumentError("the input has a column named file_index, which hides the DuckDB virtual column "
                                "duckllm run splits files with; rename it (SELECT * RENAME ...) into a new file first")
        exposed = _virtual_columns_read(query.sql, columns)
        counts = dict(con.execute(f"SELECT file_index, count(*) FROM {source} GROUP BY ALL").fetchall())
        con.execute(f"DESCRIBE {_with_files(query.sql, files).sql('duckdb')}")   # a typo fails here, not on workers
    except duckdb.Error as e:
        raise ArgumentError(f"the query does not run on its input: {e}") from None
    file_rows = tuple(counts.get(i, 0) for i in range(len(files)))
    shards = []
    for i, n in enumerate(file_rows):
        for offset in range(0, n, rows_per_shard):
            shards.append(Shard(len(shards), i, offset, min(rows_per_shard, n - offset)))
    if not shards:   # no input rows: one empty part still carries the output's columns
        shards.append(Shard(0, 0, 0, 0))
    return Plan(query, model, files, file_rows, rows_per_shard, tuple(shards), exposed)
