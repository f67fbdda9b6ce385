"""The SQL face of llm_calibrate and llm_thresholds: scalar UDFs answering a LIST of STRUCTs
that the TEMP table macros in sql_macros/calibration.sql unnest (as duckllm_stats() does).

Each macro takes the function's name, the labeled rows and the function's own named arguments,
packed into one JSON object as every duckllm macro does.
"""
from __future__ import annotations

import json

from duckllm.confidence import fitting

CALIBRATE_TYPE = ("STRUCT(function VARCHAR, method VARCHAR, chosen BOOLEAN, rows BIGINT, accuracy DOUBLE, "
                  "ece_before DOUBLE, ece_after DOUBLE, auroc_before DOUBLE, auroc_after DOUBLE, "
                  "brier_before DOUBLE, brier_after DOUBLE)[]")
THRESHOLDS_TYPE = ("STRUCT(function VARCHAR, target VARCHAR, confidence VARCHAR, cut DOUBLE, accuracy DOUBLE, "
                   "coverage DOUBLE, rows BIGINT)[]")


def _arguments(args: str) -> tuple[dict, object]:
    arguments = {k: v for k, v in json.loads(args).items() if v is not None}
    arguments.pop("cache", None)
    return arguments, arguments.pop("rows", None)


def calibrate_udf(engine):
    def udf(function: str, args: str):
        arguments, rows = _arguments(args)
        method = arguments.pop("method", None)
        return fitting.calibrate(engine, function, rows, arguments, method)
    return udf


def thresholds_udf(engine):
    def udf(function: str, args: str):
        arguments, rows = _arguments(args)
        precision, coverage = arguments.pop("precision", None), arguments.pop("coverage", None)
        return fitting.thresholds(engine, function, rows, arguments, precision, coverage)
    return udf


def register(con, engine, existing: set[str]) -> None:
    for name, make, result_type in (("__duckllm_calibrate", calibrate_udf, CALIBRATE_TYPE),
                                    ("__duckllm_thresholds", thresholds_udf, THRESHOLDS_TYPE)):
        if name not in existing:
            con.create_function(name, make(engine), ["VARCHAR", "VARCHAR"], result_type,
                                null_handling="special", side_effects=True)
