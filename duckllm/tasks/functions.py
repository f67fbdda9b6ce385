"""duckllm's SQL functions, in the order the reference lists them.

Each task module holds DECLARATION (the function's SQL face: duckllm/tasks/declare.py) and
from_sql (its task, built from the macro's JSON arguments); llm_extract, typed by its caller's
schema, also json_structure (the shape of its answer for DuckDB's from_json).
"""
from __future__ import annotations

from duckllm.tasks import (
    classify,
    classify_multi,
    clean,
    enrich,
    entities,
    extract,
    match,
)

TASKS = (classify, classify_multi, clean, match, extract, entities, enrich)
DECLARATIONS = tuple(task.DECLARATION for task in TASKS)
