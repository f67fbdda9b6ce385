"""The SQL face of llm_calibrate and llm_thresholds, made from the declarations of the functions
they calibrate: scalar UDFs answering a LIST of STRUCTs that TEMP table macros unnest (as
duckllm_stats() does).

    SELECT * FROM llm_calibrate('llm_classify', (SELECT list({'input': msg, 'output': label}) FROM reviewed),
                                labels := ['ham', 'spam'])
    SELECT * FROM llm_thresholds('llm_classify', (SELECT list(...) FROM reviewed), labels := [...],
                                 precision := [0.9, 0.95], coverage := 0.8)

Each macro takes the function's name, the labeled rows and, as named parameters, every parameter
of the functions that can be calibrated (a function's positional ones too: labels :=, schema :=),
packed into one JSON object as every duckllm macro packs its arguments. A row's output:
llm_classify its label; llm_match yes or no (the input: ['record a', 'record b']); llm_extract a
STRUCT of the right field values (NULL: not in the text); llm_classify_multi the list of labels
that apply. method := 'auto' (default), 'temperature', 'platt', 'isotonic', 'histogram',
'by_answer', or 'none' to forget the task's calibration.
"""
from __future__ import annotations

import json
from collections.abc import Callable

from duckllm.confidence import fitting
from duckllm.sql.macros import PACKED, VARIABLES
from duckllm.tasks.declare import AGREEMENT
from duckllm.tasks.functions import DECLARATIONS

CALIBRATE_TYPE = ("STRUCT(function VARCHAR, method VARCHAR, chosen BOOLEAN, rows BIGINT, accuracy DOUBLE, "
                  "ece_before DOUBLE, ece_after DOUBLE, auroc_before DOUBLE, auroc_after DOUBLE, "
                  "brier_before DOUBLE, brier_after DOUBLE)[]")
THRESHOLDS_TYPE = ("STRUCT(function VARCHAR, target VARCHAR, confidence VARCHAR, cut DOUBLE, accuracy DOUBLE, "
                   "coverage DOUBLE, rows BIGINT)[]")
# (macro, its UDF, its own parameters, its answer's type)
MACROS = (("llm_calibrate", "__duckllm_calibrate", ("method",), CALIBRATE_TYPE),
          ("llm_thresholds", "__duckllm_thresholds", ("precision", "coverage"), THRESHOLDS_TYPE))
NAMES = {udf for _, udf, _, _ in MACROS}


def parameters() -> list[str]:
    """Every parameter of the functions that can be calibrated, once each, but their row texts and
    agreement: calibration asks the model itself about every labeled row."""
    names = [p.name for f in DECLARATIONS if f.name in fitting.GRADERS for p in f.params
             if not p.row and p not in AGREEMENT]
    return list(dict.fromkeys(names))


def macro(name: str, udf: str, own: tuple[str, ...]) -> str:
    names = parameters() + list(own)
    packed = {"rows": "rows", **{n: PACKED.get(n, n) for n in names}}
    packed.update(VARIABLES)
    arguments = "to_json({" + ", ".join(f"'{key}': {value}" for key, value in packed.items()) + "})::VARCHAR"
    params = ", ".join(["function", "rows"] + [f"{n} := NULL" for n in names])
    return (f"CREATE OR REPLACE TEMP MACRO {name}({params}) AS TABLE\n"
            f"    SELECT unnest({udf}(function, {arguments}), recursive := true);\n")


SQL = "\n".join(macro(name, udf, own) for name, udf, own, _ in MACROS)


def _arguments(args: str) -> tuple[dict, object, bool | None, bool]:
    """(the function's arguments, the labeled rows, use the result cache?, only planned?)"""
    arguments = json.loads(args)
    variables = {name: arguments.pop(name, None) for name in VARIABLES}
    use_cache = None if variables["cache"] is None else bool(variables["cache"])
    arguments = {k: v for k, v in arguments.items() if v is not None}
    return arguments, arguments.pop("rows", None), use_cache, variables["plan"] is not None


def calibrate_udf(engine):
    def udf(function: str, args: str):
        arguments, rows, use_cache, planned = _arguments(args)
        method = arguments.pop("method", None)
        return [] if planned else fitting.calibrate(engine, function, rows, arguments, method, use_cache)
    return udf


def thresholds_udf(engine):
    def udf(function: str, args: str):
        arguments, rows, use_cache, planned = _arguments(args)
        precision, coverage = arguments.pop("precision", None), arguments.pop("coverage", None)
        return [] if planned else fitting.thresholds(engine, function, rows, arguments, precision, coverage,
                                                     use_cache)
    return udf


def register(con, engine: Callable, existing: set[str]) -> None:
    """The UDFs this database lacks (engine() gives the engine they call), and the macros."""
    makers = {"__duckllm_calibrate": calibrate_udf, "__duckllm_thresholds": thresholds_udf}
    for _, udf, _, result_type in MACROS:
        if udf not in existing:
            con.create_function(udf, makers[udf](engine()), ["VARCHAR", "VARCHAR"], result_type,
                                null_handling="special", side_effects=True)
    con.execute(SQL)
