"""The SQL face of duckllm's functions: one DuckDB macro per declared function.

Each macro packs its arguments, named parameters and options STRUCT into one JSON object for the
Python UDF behind it, so arguments of any shape reach one validator with messages of our own.
Connection variables travel in it too: duckllm_model, the default model (SET VARIABLE
duckllm_model = 'qwen2.5-coder-0.5b'); duckllm_cache, false to bypass the result cache;
duckllm_plan, a plan id under which the call is counted instead of answered (explain); and, for
a function a proxy may answer, the query the call belongs to (QUERY).
The macros are TEMP: they live with the connection and are never written into a database file.
A text of another type (a number, a date, a BLOB) is read as its VARCHAR form, as a cast writes it.
"""
from __future__ import annotations

from duckllm.tasks.declare import Function
from duckllm.tasks.functions import DECLARATIONS

# JSON keys of the connection variables each call carries; the UDF takes them out before the
# task is built
VARIABLES = {"cache": "getvariable('duckllm_cache')", "plan": "getvariable('duckllm_plan')"}
# names the SQL query a call is part of (duckllm_session is set by register; each autocommitted
# query runs in a transaction of its own), so that chunks DuckDB hands over from several threads,
# in no fixed order, all learn from the same stored examples (duckllm/proxy/cascade.py). On one
# thread the chunks come in scan order: no name, and each learns from the chunks before it.
QUERY = {"query": "CASE WHEN current_setting('threads') > 1 "
                  "THEN getvariable('duckllm_session') || ':' || txid_current() END"}
# what a parameter's JSON entry holds when it is more than the argument itself
PACKED = {"model": "coalesce(model, getvariable('duckllm_model'))"}   # the connection's default model
BLANK = r"'[\s\p{Z}]*'"   # only whitespace, Unicode's included


def row_text(function: Function) -> str:
    """The UDF's first argument: the row's text, or a pair of records as one JSON text so that
    dedup and the cache key on the pair; NULL if either is, '' (blank: no model work) if
    either is only whitespace."""
    if len(function.rows) == 1:
        return f"{function.rows[0].name}::VARCHAR"
    a, b = (f"{p.name}::VARCHAR" for p in function.rows)
    return (f"CASE WHEN {function.rows[0].name} IS NULL OR {function.rows[1].name} IS NULL THEN NULL "
            f"WHEN regexp_full_match({a}, {BLANK}) OR regexp_full_match({b}, {BLANK}) THEN '' "
            f"ELSE to_json([{a}, {b}])::VARCHAR END")


def macro(function: Function) -> str:
    """CREATE OR REPLACE TEMP MACRO for one function."""
    params = ", ".join(p.name if p.positional else f"{p.name} := {p.default}" for p in function.params)
    packed = {p.name: PACKED.get(p.name, p.name) for p in function.params if not p.row}
    packed.update(VARIABLES)
    if "agreement" in packed:
        packed.update(QUERY)
    arguments = "to_json({" + ", ".join(f"'{key}': {value}" for key, value in packed.items()) + "})::VARCHAR"
    call = f"{function.udf}({row_text(function)}, {arguments})"
    if function.returns == "schema":    # the UDF answers JSON, read here into the schema's STRUCT
        call = f"from_json({call}, {structure_udf(function)}(to_json(schema)::VARCHAR))"
    return f"CREATE OR REPLACE TEMP MACRO {function.name}({params}) AS\n    {call};\n"


def structure_udf(function: Function) -> str:
    """The UDF that turns a schema-typed function's schema into its answer's from_json shape."""
    return function.udf + "_structure"


SQL = "\n".join(macro(function) for function in DECLARATIONS)

