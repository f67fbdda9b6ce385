"""The query duckllm run splits: one row-mapping SELECT over one file reader. What needs rows of
more than one shard (or batch) is refused, each refusal naming a fix."""
from __future__ import annotations

import os
from dataclasses import dataclass

import duckdb
import sqlglot
from sqlglot import exp

from duckllm.errors import ArgumentError
from duckllm.sql.explain import FROM, WITH

READERS = {"read_parquet": "parquet", "parquet_scan": "parquet", "read_csv": "csv", "read_csv_auto": "csv",
           "read_json": "json", "read_json_auto": "json", "read_ndjson": "json", "read_ndjson_auto": "json"}


class NotRowMapping(ArgumentError):
    """The query needs rows of more than one shard (or batch)."""

    def __init__(self, reason: str, fix: str):
        super().__init__(f"duckllm run cannot split this query into shards: {reason}. {fix}")
        self.reason = reason


@dataclass(frozen=True)
class Query:
    """A row-mapping query, its input files made absolute (workers do not share our cwd)."""
    sql: str                    # normalized by sqlglot, paths absolute
    paths: tuple[str, ...]      # the table function's paths as written (globs not expanded)


def _refuse(reason: str, fix: str):
    raise NotRowMapping(reason, fix)


def _aggregate_names() -> frozenset[str]:
    """DuckDB's aggregate functions, including ones sqlglot does not know (histogram, ...)."""
    rows = duckdb.connect().execute(
        "SELECT DISTINCT lower(function_name) FROM duckdb_functions() WHERE function_type = 'aggregate'").fetchall()
    return frozenset(r[0] for r in rows)


def check_row_mapping(select: exp.Select, output_hint: str = "DIR") -> None:
    """Refuse what needs rows of more than one shard; each refusal names a fix.
    Subqueries are the user's own (read in full by every worker), so only the top level counts."""
    read_back = f"SELECT ... FROM read_parquet('{output_hint}/*.parquet')"
    if select.args.get("group") or select.args.get("having"):
        _refuse("GROUP BY needs the rows of every shard",
                f"Run the row-level part (the llm_* calls) with duckllm run, then aggregate its output "
                f"with DuckDB: {read_back} GROUP BY ...")
    if select.args.get("distinct"):
        _refuse("DISTINCT compares rows across shards",
                f"Drop DISTINCT here and apply it to the output: SELECT DISTINCT ... FROM "
                f"read_parquet('{output_hint}/*.parquet')")
    if select.args.get("order"):
        _refuse("ORDER BY sorts across shards",
                f"Drop it: the output keeps the input's order (parts are numbered in input order); "
                f"sort when you read it: {read_back} ORDER BY ...")
    if select.args.get("limit") or select.args.get("offset"):
        _refuse("LIMIT/OFFSET pick rows across the whole input",
                "Try the query on a few rows with duckllm sql and LIMIT, or give duckllm run fewer input files")
    if select.args.get("sample") or select.find(exp.TableSample):
        _refuse("a SAMPLE draws rows at random across the whole input",
                "Sample the input into a file first (COPY (SELECT * FROM ... USING SAMPLE ...) TO 'sample.parquet') "
                "and run on that file")
    if select.args.get("qualify"):
        _refuse("QUALIFY filters on window functions, which see rows of other shards",
                f"Compute the window on the output instead: {read_back} QUALIFY ...")
    aggregates = _aggregate_names()
    for node in select.walk(prune=lambda n: isinstance(n, exp.Query) and n is not select):
        if isinstance(node, exp.Window):
            _refuse(f"the window function {node.this.sql('duckdb')} OVER (...) sees rows of other shards",
                    f"Compute it on the output instead: {read_back}")
        if isinstance(node, exp.AggFunc) or (isinstance(node, exp.Anonymous) and node.name.lower() in aggregates):
            _refuse(f"the aggregate {node.sql('duckdb')} needs the rows of every shard",
                    f"Run the row-level part (the llm_* calls) with duckllm run, then aggregate its output "
                    f"with DuckDB: {read_back}")


def _reader_name(function: exp.Expression) -> str | None:
    if isinstance(function, exp.Anonymous):
        return function.name.lower()
    if isinstance(function, exp.Func):
        return function.sql_name().lower()
    return None


def path_argument(function: exp.Expression) -> exp.Expression:
    """The first positional argument of a table function (sqlglot keeps it in `this` or `expressions`)."""
    first = function.args.get("this")
    if not isinstance(first, exp.Expression) or isinstance(first, exp.Identifier):
        first = (function.expressions or [None])[0]
    return first


def absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def parse(sql: str, output_hint: str = "DIR") -> Query:
    """Check that sql is one row-mapping SELECT over one file reader; its paths made absolute."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as e:
        raise ArgumentError(f"cannot read the query: {e}") from None
    if len(statements) != 1:
        _refuse(f"it holds {len(statements)} statements", "Give one SELECT per duckllm run")
    select = statements[0]
    if isinstance(select, exp.SetOperation):
        _refuse("UNION/INTERSECT/EXCEPT combine several queries",
                "Run each SELECT as its own duckllm run (its own --output), then combine the outputs with DuckDB")
    if not isinstance(select, exp.Select):
        _refuse(f"it is a {select.key.upper()} statement, not a SELECT", "Give a SELECT over read_parquet(...), "
                "read_csv(...) or read_json(...); write its output to files with --output")
    if select.args.get(WITH):
        _refuse("it has a WITH clause", "Put the file reader directly in FROM: SELECT ... FROM read_parquet('...')")
    if select.args.get("joins"):
        _refuse("a JOIN pairs rows of different shards",
                "Join with DuckDB first and write the joined rows to Parquet, then run on that file "
                "(or join the output afterwards)")
    source = from_clause(select)
    table = source.this if source else None
    function = table.this if isinstance(table, exp.Table) else None
    if _reader_name(function) not in READERS:
        shown = table.sql("duckdb") if table is not None else "nothing"
        _refuse(f"it reads FROM {shown}, and each worker must read its own part of the input from files",
                "Read files in FROM: read_parquet('data/*.parquet'), read_csv('a.csv') or read_json('x.json') "
                "(one path, a glob or a list); a table of a database can be exported first with "
                "COPY tbl TO 'tbl.parquet'")
    check_row_mapping(select, output_hint)

    argument = path_argument(function)
    items = argument.expressions if isinstance(argument, exp.Array) else [argument]
    if not items or not all(isinstance(i, exp.Literal) and i.is_string for i in items):
        _refuse(f"the path {argument.sql('duckdb') if argument else '(none)'} is not a string or a list of strings",
                "Give the files as 'data/*.parquet' or ['a.csv', 'b.csv']")
    paths = tuple(i.this for i in items)
    argument.replace(exp.Array(expressions=[exp.Literal.string(absolute(p)) for p in paths]))
    return Query(select.sql("duckdb"), paths)


def from_clause(select: exp.Select) -> exp.From | None:
    return select.args.get(FROM)


def reader(select: exp.Select) -> exp.Expression:
    return from_clause(select).this.this


def columns_sql(columns: dict[str, str]) -> str:
    """SELECT *, <expression> AS <name>, ... over one batch; each expression must be row by row."""
    if not columns:
        raise ArgumentError("give at least one column: with_columns(ds, {'name': \"llm_classify(text, ['a', 'b'])\"})")
    parts = []
    for name, expression in columns.items():
        try:
            parsed = sqlglot.parse_one(f"SELECT {expression}", read="duckdb")
        except sqlglot.errors.ParseError as e:
            raise ArgumentError(f"column {name!r}: cannot read {expression!r} as a SQL expression: {e}") from None
        if not isinstance(parsed, exp.Select) or len(parsed.expressions) != 1 or from_clause(parsed):
            raise ArgumentError(f"column {name!r}: give one SQL expression over the batch's columns, "
                                f"e.g. \"llm_classify(text, ['a', 'b'])\", not {expression!r}")
        try:
            check_row_mapping(parsed)
        except NotRowMapping as e:
            raise ArgumentError(f"column {name!r}: {e.reason}, and with_columns computes one value per row "
                                f"from that row; aggregate its output afterwards (Ray Data's groupby, or "
                                f"DuckDB over the files it writes)") from None
        parts.append(exp.alias_(parsed.expressions[0], name, quoted=True))
    return exp.select("*", *parts).from_("__duckllm_batch").sql("duckdb")
