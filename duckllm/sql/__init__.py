"""DuckDB glue: vectorised (Arrow) UDFs over the engine, and the SQL macros in sql_macros/.

Each UDF receives a chunk of rows (up to 2048), groups them by their arguments, builds one
task per group, and hands the group's texts to the engine in one call. Knows nothing of llama.cpp.
"""
from __future__ import annotations

import json
import weakref

import duckdb
import pyarrow as pa

from duckllm.engine import Engine, cancel
from duckllm.engine.stats import FIELDS, STATS
from duckllm.home import package_data
from duckllm.sql import calibrate
from duckllm.tasks import (
    classify,
    classify_multi,
    clean,
    enrich,
    entities,
    extract,
    match,
)

CONFIDENCE = ("confidence", pa.float64())
NOTE = ("note", pa.string())
CLASSIFY_TYPE = pa.struct([("label", pa.string()), CONFIDENCE, NOTE])
CLEAN_TYPE = pa.struct([("value", pa.string()), CONFIDENCE, ("changed", pa.bool_()), NOTE])
MATCH_TYPE = pa.struct([("match", pa.bool_()), CONFIDENCE, NOTE])
ENRICH_TYPE = pa.struct([("value", pa.string()), CONFIDENCE, ("truncated", pa.bool_()), NOTE])
MULTI_TYPE = pa.list_(pa.struct([("label", pa.string()), CONFIDENCE]))
ENTITIES_TYPE = pa.list_(pa.struct([("text", pa.string()), ("type", pa.string()), CONFIDENCE]))


STATS_TYPE = "STRUCT(" + ", ".join(
    f"{name} {dict(int='BIGINT', float='DOUBLE', str='VARCHAR')[kind.__name__]}" for name, kind in FIELDS.items()) + ")"


def _duckdb_type(arrow_type: pa.DataType) -> str:
    names = {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}
    if isinstance(arrow_type, pa.ListType):
        return _duckdb_type(arrow_type.value_type) + "[]"
    if isinstance(arrow_type, pa.StructType):
        return "STRUCT(" + ", ".join(f"{f.name} {_duckdb_type(f.type)}" for f in arrow_type) + ")"
    return names[arrow_type]


def _vectorised(engine: Engine, build, result_type: pa.DataType, to_arrow):
    """An Arrow UDF (text, args_json) -> STRUCT making one engine call per distinct args."""
    tasks = {}

    def udf(text, args):
        texts, arg_values = text.to_pylist(), args.to_pylist()
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            if t is not None:
                groups.setdefault(arg_values[i], []).append(i)
        results = [None] * len(texts)
        for key, rows in groups.items():
            if key not in tasks:
                arguments = json.loads(key) if key else {}
                use_cache = arguments.pop("cache", None)
                tasks[key] = (build(arguments), None if use_cache is None else bool(use_cache))
            task, use_cache = tasks[key]
            for i, r in zip(rows, engine.run(task, [texts[i] for i in rows], use_cache=use_cache)):
                results[i] = r
        return pa.array([None if r is None else to_arrow(r) for r in results], type=result_type)

    return udf


def _field(name):
    return lambda result: result[name]


FUNCTIONS = {
    # SQL name: (task builder taking the macro's JSON arguments, result type, result -> Arrow value)
    "__duckllm_classify": (classify.from_sql, CLASSIFY_TYPE, dict),
    "__duckllm_clean": (clean.from_sql, CLEAN_TYPE, dict),
    "__duckllm_match": (match.from_sql, MATCH_TYPE, dict),
    "__duckllm_enrich": (enrich.from_sql, ENRICH_TYPE, dict),
    "__duckllm_classify_multi": (classify_multi.from_sql, MULTI_TYPE, _field("labels")),
    "__duckllm_entities": (entities.from_sql, ENTITIES_TYPE, _field("entities")),
    # typed by the caller's schema: JSON text that the llm_extract macro reads with from_json
    "__duckllm_extract": (extract.from_sql, pa.string(), lambda r: json.dumps(r, ensure_ascii=False)),
}


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
    for name, (build, result_type, to_arrow) in FUNCTIONS.items():
        if name not in existing:
            con.create_function(name, _vectorised(engine, build, result_type, to_arrow), ["VARCHAR", "VARCHAR"],
                                _duckdb_type(result_type), type="arrow", null_handling="special",
                                side_effects=False)
    if "__duckllm_extract_structure" not in existing:   # evaluated once, when a query is bound
        # null_handling: a NULL schema is an error that says so, not a silently NULL column
        con.create_function("__duckllm_extract_structure", extract.json_structure, ["VARCHAR"], "VARCHAR",
                            null_handling="special", side_effects=False)
    if "__duckllm_engine" not in existing:
        key = str(id(engine))
        _engines[key] = engine
        con.create_function("__duckllm_engine", lambda: key, [], "VARCHAR", side_effects=False)
    if "__duckllm_stats" not in existing:
        con.create_function("__duckllm_stats", STATS.snapshot, [], STATS_TYPE, side_effects=True)
    calibrate.register(con, engine, existing)     # llm_calibrate, llm_thresholds
    con.execute("SET VARIABLE duckllm_model = ?", [model])
    for script in sorted(package_data("sql_macros").glob("*.sql")):
        con.execute(script.read_text())
    cancel.watch(con)   # Ctrl-C stops its model work from any program, not only the CLI
    return con


def connect(database: str = ":memory:", model: str | None = None, **kwargs) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with duckllm's functions; model is a catalog name or .gguf path."""
    return register(duckdb.connect(database, **kwargs), model=model)
