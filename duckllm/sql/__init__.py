"""DuckDB glue: the UDFs over the engine (sql/udfs.py) and the macros in front of them
(sql/macros.py), both made from the functions' declarations (duckllm/tasks/declare.py), plus the
SQL macros in sql_macros/ that are not one function's. Knows nothing of llama.cpp.
"""
from __future__ import annotations

import weakref

import duckdb

from duckllm.engine import Engine, cancel
from duckllm.engine.stats import FIELDS, STATS
from duckllm.home import package_data
from duckllm.sql import macros, udfs

STATS_TYPE = "STRUCT(" + ", ".join(
    f"{name} {dict(int='BIGINT', float='DOUBLE', str='VARCHAR')[kind.__name__]}" for name, kind in FIELDS.items()) + ")"


_process_engine: Engine | None = None
_engines: weakref.WeakValueDictionary[str, Engine] = weakref.WeakValueDictionary()   # by __duckllm_engine()


def default_engine() -> Engine:
    """One engine per process, so every connection shares the loaded models."""
    global _process_engine
    if _process_engine is None:
        _process_engine = Engine()
    return _process_engine


def engine_of(con: duckdb.DuckDBPyConnection) -> Engine:
    """The engine that answers this connection's calls: its database's UDFs hold the engine of
    the first register(), whatever connection or cursor registers later."""
    try:
        key = con.execute("SELECT __duckllm_engine()").fetchone()[0]
    except duckdb.Error:      # duckllm is not registered here
        return default_engine()
    return _engines.get(key) or default_engine()


def register(con: duckdb.DuckDBPyConnection, model: str | None = None, engine: Engine | None = None):
    """Add duckllm's functions to an open DuckDB connection (or cursor) and return it.

    The UDFs belong to the database instance and are created once; the macros are TEMP, so
    each connection or cursor registers its own. model sets this connection's default model.
    """
    existing = {row[0] for row in con.execute(
        "SELECT function_name FROM duckdb_functions() WHERE function_name LIKE '\\_\\_duckllm\\_%' ESCAPE '\\'").fetchall()}
    engine = engine or default_engine()
    udfs.create(con, engine, existing)
    if "__duckllm_engine" not in existing:
        key = str(id(engine))
        _engines[key] = engine
        con.create_function("__duckllm_engine", lambda: key, [], "VARCHAR", side_effects=False)
    if "__duckllm_stats" not in existing:
        con.create_function("__duckllm_stats", STATS.snapshot, [], STATS_TYPE, side_effects=True)
    con.execute("SET VARIABLE duckllm_model = ?", [model])
    con.execute(macros.SQL)
    for script in sorted(package_data("sql_macros").glob("*.sql")):
        con.execute(script.read_text())
    cancel.watch(con)   # Ctrl-C stops its model work from any program, not only the CLI
    return con


def connect(database: str = ":memory:", model: str | None = None, **kwargs) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with duckllm's functions; model is a catalog name or .gguf path."""
    return register(duckdb.connect(database, **kwargs), model=model)
