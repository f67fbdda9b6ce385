"""DuckDB glue: the UDFs over the engine (sql/udfs.py) and the macros in front of them
(sql/macros.py), both made from the functions' declarations (duckllm/tasks/declare.py), plus the
SQL macros in sql_macros/ that are not one function's. Knows nothing of llama.cpp.
"""
from __future__ import annotations

import dataclasses
import threading
import uuid
import weakref
from pathlib import Path

import duckdb

from duckllm.engine import Engine, cancel
from duckllm.engine.stats import FIELDS, STATS
from duckllm.errors import ArgumentError
from duckllm.resources import package_data
from duckllm.settings import Settings
from duckllm.sql import calibrate, macros, udfs

STATS_TYPE = "STRUCT(" + ", ".join(
    f"{name} {dict(int='BIGINT', float='DOUBLE', str='VARCHAR')[kind.__name__]}" for name, kind in FIELDS.items()) + ")"


_process_engines: dict[Settings, Engine] = {}
_process_lock = threading.Lock()
_engines: weakref.WeakValueDictionary[str, Engine] = weakref.WeakValueDictionary()   # by __duckllm_engine()


def default_engine(settings: Settings | None = None) -> Engine:
    """The process's engine for these settings (None: the environment's). Connections whose
    settings differ only in their model and in using the cache share one (both are variables of
    the connection), and every engine shares the loaded models."""
    settings = settings or Settings.from_env()
    shared = dataclasses.replace(settings, model=None, cache=True)
    with _process_lock:
        if shared not in _process_engines:
            _process_engines[shared] = Engine(shared)
        return _process_engines[shared]


def engine_of(con: duckdb.DuckDBPyConnection) -> Engine:
    """The engine that answers this connection's calls: its database's UDFs hold the engine of
    the first register(), whatever connection or cursor registers later."""
    try:
        # fetchall, not fetchone: DuckDB 2 keeps a half-read result open and refuses con.sql after it
        (key,), = con.execute("SELECT __duckllm_engine()").fetchall()
    except duckdb.Error:      # duckllm is not registered here
        return default_engine()
    return _engines.get(key) or default_engine()


def settings_at_edge(settings: Settings | None = None, model: str | None = None,
                     cache: bool | str | Path | None = None) -> Settings:
    """The settings connect() and register() work with: the given ones (None: the environment's),
    with the model and cache arguments over them, validated before anything runs."""
    if settings is not None and not isinstance(settings, Settings):
        raise ArgumentError(f"settings must be a duckllm.settings.Settings, got {settings!r}; make one with "
                            f"Settings.from_env(...)")
    return (settings or Settings.from_env()).replace(model=model).with_cache(cache)


def register(con: duckdb.DuckDBPyConnection, model: str | None = None, *, cache: bool | str | Path | None = None,
             engine: Engine | None = None, settings: Settings | None = None) -> duckdb.DuckDBPyConnection:
    """Add duckllm's functions to an open DuckDB connection (or cursor) and return it.

    model: this connection's default model (a catalog name or a .gguf path); cache: True or
    False (use the result cache or not), or the path of a result cache file; settings: the rest
    (default: the environment's, or the given engine's). The UDFs belong to the database instance
    and are created once, calling the engine of the first register (engine, else the process's
    engine for these settings); the macros and the model and cache variables are the
    connection's (TEMP), so each connection or cursor registers its own.
    """
    settings = settings_at_edge(settings or (engine.settings if engine is not None else None), model, cache)
    existing = {row[0] for row in con.execute(
        "SELECT function_name FROM duckdb_functions() WHERE function_name LIKE '\\_\\_duckllm\\_%' ESCAPE '\\'").fetchall()}
    if engine is None and not {*udfs.names(), "__duckllm_engine"} <= existing:
        engine = default_engine(settings)
    udfs.create(con, engine, existing)
    if "__duckllm_engine" not in existing:
        key = str(id(engine))
        _engines[key] = engine
        con.create_function("__duckllm_engine", lambda: key, [], "VARCHAR", side_effects=False)
    if "__duckllm_stats" not in existing:
        con.create_function("__duckllm_stats", STATS.snapshot, [], STATS_TYPE, side_effects=True)
    calibrate.register(con, lambda: engine or default_engine(settings), existing)   # llm_calibrate, llm_thresholds
    con.execute("SET VARIABLE duckllm_model = ?", [settings.model])
    con.execute("SET VARIABLE duckllm_cache = ?", [settings.cache])
    # with txid_current(), names each query of this connection apart (macros.QUERY, duckllm.proxy)
    con.execute("SET VARIABLE duckllm_session = ?", [uuid.uuid4().hex])
    con.execute(macros.SQL)
    for script in sorted(package_data("sql_macros").glob("*.sql")):
        con.execute(script.read_text())
    cancel.watch(con)   # Ctrl-C stops its model work from any program, not only the CLI
    return con


def connect(database: str = ":memory:", model: str | None = None, *, cache: bool | str | Path | None = None,
            settings: Settings | None = None, **duckdb_kwargs) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with duckllm's functions; model is a catalog name or .gguf path, cache
    True, False or the path of a result cache file, settings the rest (default: the
    environment's). A bad setting is an error here, before the database is opened."""
    settings = settings_at_edge(settings, model, cache)
    return register(duckdb.connect(database, **duckdb_kwargs), settings=settings)
