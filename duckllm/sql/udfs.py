"""The Python UDFs behind the macros: one per declared function, vectorised over Arrow.

Each UDF receives a chunk of rows (up to 2048), groups them by their arguments, builds one
task per group, and hands the group's texts to the engine in one call. Its result type follows
from the function's declaration. Knows nothing of llama.cpp.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

from duckllm.engine import Engine
from duckllm.sql.macros import QUERY, VARIABLES, structure_udf
from duckllm.tasks.declare import Function, ListOf, PerField, Struct, Type, sql_type
from duckllm.tasks.functions import TASKS

SCALARS = {"VARCHAR": pa.string(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}
TASKS_KEPT = 1024     # built tasks a UDF keeps, by their arguments


def arrow_type(kind: Type) -> pa.DataType:
    if isinstance(kind, Struct):
        return pa.struct([(f.name, arrow_type(f.type)) for f in kind.fields])
    if isinstance(kind, ListOf):
        return pa.list_(arrow_type(kind.item))
    if isinstance(kind, PerField):
        raise TypeError("a per-field type is known only with the caller's schema")
    return SCALARS[kind]


def udf_type(function: Function) -> Type:
    """What the UDF returns: the answer's STRUCT, its one list, or (typed by the caller's schema)
    JSON text that the macro reads with from_json."""
    if function.returns == "schema":
        return "VARCHAR"
    if function.returns == "list":
        return function.result[0].type
    return Struct(function.result)


def to_arrow(function: Function) -> Callable[[dict], Any]:
    """An answer (the task's result dict) as a value of udf_type(function)."""
    if function.returns == "schema":
        return lambda result: json.dumps(result, ensure_ascii=False)
    if function.returns == "list":
        field = function.result[0].name
        return lambda result: result[field]
    return dict


def vectorised(engine: Engine, build: Callable[[dict], Any], function: Function):
    """An Arrow UDF (text, args_json) -> result, making one engine call per distinct args."""
    tasks = {}
    kind, convert = arrow_type(udf_type(function)), to_arrow(function)

    def udf(text, args):
        texts, arg_values = text.to_pylist(), args.to_pylist()
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            if t is not None:
                groups.setdefault(arg_values[i], []).append(i)
        results = [None] * len(texts)
        for key, rows in groups.items():
            arguments = json.loads(key) if key else {}
            # the connection's variables say how to run the call, not what the task is
            variables = {name: arguments.pop(name, None) for name in [*VARIABLES, *QUERY]}
            task_key = json.dumps(arguments, sort_keys=True)
            if task_key not in tasks:
                if len(tasks) >= TASKS_KEPT:
                    tasks.clear()
                tasks[task_key] = build(arguments)
            use_cache = None if variables["cache"] is None else bool(variables["cache"])
            for i, r in zip(rows, engine.run(tasks[task_key], [texts[i] for i in rows], use_cache=use_cache,
                                             plan=variables["plan"], query=variables["query"])):
                results[i] = r
        return pa.array([None if r is None else convert(r) for r in results], type=kind)

    return udf


def names() -> set[str]:
    """The UDFs create() makes."""
    return {task.DECLARATION.udf for task in TASKS}


def create(con: duckdb.DuckDBPyConnection, engine: Engine, existing: set[str]) -> None:
    """Create the declared functions' UDFs this database does not have yet."""
    for task in TASKS:
        function = task.DECLARATION
        if function.udf not in existing:
            con.create_function(function.udf, vectorised(engine, task.from_sql, function), ["VARCHAR", "VARCHAR"],
                                sql_type(udf_type(function)), type="arrow", null_handling="special",
                                side_effects=False)
        if function.returns == "schema" and structure_udf(function) not in existing:
            # evaluated once, when a query is bound; null_handling: a NULL schema is an error that
            # says so, not a silently NULL column
            con.create_function(structure_udf(function), task.json_structure, ["VARCHAR"], "VARCHAR",
                                null_handling="special", side_effects=False)

