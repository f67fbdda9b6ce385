"""llm_extract: typed fields read from a text, each NULL when the text does not hold it.

The answer is written as one `name: value` line per field, in the schema's order; the field
names are fed (not decoded), each value is decoded within its type, so every answer parses.
"""
from __future__ import annotations

import datetime as dt
import json

from duckllm.confidence import mean_token_prob
from duckllm.errors import ArgumentError
from duckllm.runtime import Pick, Say, Write, answer_bound
from duckllm.tasks import TRUNCATED, Task, canonical, instructed, notes
from duckllm.tasks.declare import (
    EMPTY_TEXT,
    INSTRUCTIONS,
    MODEL,
    NOTE,
    OPTIONS,
    TEXT,
    Field,
    Function,
    Param,
    PerField,
)

DECLARATION = Function(
    "llm_extract",
    params=(TEXT, Param("schema", "STRUCT", positional=True), INSTRUCTIONS, OPTIONS, MODEL),
    result=(Field("confidence", PerField("DOUBLE")), NOTE),     # after the schema's own fields
    blank={"confidence": None, "note": EMPTY_TEXT},
    returns="schema",
)
FUNCTION = DECLARATION.name
VERSION = 2
RESERVED = tuple(field.name for field in DECLARATION.result)     # no schema field may take these names
SCHEMA_EXAMPLE = "{'brand': 'VARCHAR', 'size_gb': 'INTEGER'}"

# SQL type -> (how the prompt names it, the kind of value written, its token limit)
TYPES = {
    "VARCHAR": ("text", "text", 32),
    "INTEGER": ("integer", "integer", 12), "BIGINT": ("integer", "integer", 16),
    "SMALLINT": ("integer", "integer", 8), "TINYINT": ("integer", "integer", 6),
    "DOUBLE": ("number", "number", 16), "FLOAT": ("number", "number", 16),
    "BOOLEAN": ("true or false", "boolean", 4),
    "DATE": ("date as YYYY-MM-DD", "date", 12),
}
ALIASES = {"TEXT": "VARCHAR", "STRING": "VARCHAR", "INT": "INTEGER", "REAL": "FLOAT", "BOOL": "BOOLEAN",
           "DECIMAL": "DOUBLE", "NUMERIC": "DOUBLE", "INT64": "BIGINT", "INT32": "INTEGER"}
NULLS = ("", "null", "none", "n/a", "unknown")

# Worded as plainly as a person would ask: a longer prompt ("copy values as they appear", a
# bulleted field list) made the 1.5B model copy the text's words in order instead (bench).
SYSTEM = ("Extract these attributes from the text: {fields}. Answer with one line per attribute as "
          "`attribute: value`, and n/a when the text does not give it.")


def parse_schema(raw) -> dict[str, str]:
    """{field: SQL type} from the schema STRUCT (as JSON text or a dict), types normalised."""
    schema = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(schema, dict) or not schema:
        raise ArgumentError(f"{FUNCTION}: schema must be a STRUCT of field names and types such as "
                            f"{SCHEMA_EXAMPLE}, got {raw!r}")
    fields = {}
    for name, kind in schema.items():
        if name.lower() in RESERVED:
            raise ArgumentError(f"{FUNCTION}: a field may not be named {name!r}: the result has a "
                                f"{name.lower()} field of its own; rename it")
        kind = str(kind or "").strip().upper()
        kind = ALIASES.get(kind, kind)
        if kind not in TYPES:
            raise ArgumentError(f"{FUNCTION}: field {name!r} has type {kind or None!r}; the types are "
                                f"{', '.join(TYPES)} (e.g. {SCHEMA_EXAMPLE})")
        fields[name] = kind
    return fields


def json_structure(raw) -> str:
    """The result's shape for DuckDB's from_json: the schema's fields, then the declared ones
    (their confidences, a note)."""
    fields = parse_schema(raw)
    return json.dumps({**fields, **{field.name: dict.fromkeys(fields, field.type.item)
                                    if isinstance(field.type, PerField) else field.type
                                    for field in DECLARATION.result}})


def from_sql(args: dict) -> Task:
    args = dict(args)
    return build(args.pop("schema", None), args)


def build(schema, options=None) -> Task:
    fields = parse_schema(schema)
    listed = ", ".join(name if kind == "VARCHAR" else f"{name} ({TYPES[kind][0]})" for name, kind in fields.items())
    system, opts, _ = instructed(FUNCTION, SYSTEM.format(fields=listed), None, options, DECLARATION.options)
    names = list(fields)

    def program(text, n_tokens):
        answers = {}
        for i, name in enumerate(names):
            last = i == len(names) - 1
            yield Say(f"{name}:")
            kind, limit = TYPES[fields[name]][1], TYPES[fields[name]][2]
            if kind == "boolean":
                choice = yield Pick((" true", " false", " null"), stop="\n")
                answers[name] = (("true", "false", "null")[choice.index], choice.token_logprobs)
            else:
                written = yield Write(limit, kind="text" if kind == "date" else kind, stop="\n", or_end=last)
                answers[name] = (written.text, written.token_logprobs)
        return answers

    bound = sum(answer_bound(f"{name}:") + TYPES[kind][2] + 2 for name, kind in fields.items())

    def read(answer, text):
        values, confidence, problems = {}, {}, []
        for name, (written, logprobs) in answer.value.items():
            values[name], problem = _typed(written.strip(), fields[name])
            confidence[name] = mean_token_prob(logprobs)
            if problem:
                problems.append(f"{name}: {problem}")
        return {**values, "confidence": confidence,
                "note": notes(answer.truncated and TRUNCATED, *problems)}

    return Task(
        name=FUNCTION, version=VERSION, messages=(("system", system),), program=program,
        answer_tokens=lambda n: bound, read=read, empty={**dict.fromkeys(fields), **DECLARATION.blank},
        model=opts.get("model"), key=canonical(FUNCTION, VERSION, fields, opts),
    )


def _typed(written: str, kind: str):
    """(value, problem): a written value read as its SQL type; NULL with a reason when it is not one."""
    if written.lower() in NULLS:
        return None, None
    try:
        if kind == "VARCHAR":
            return written, None
        if kind in ("INTEGER", "BIGINT", "SMALLINT", "TINYINT"):
            return int(written.replace(",", "").replace("+", "")), None
        if kind in ("DOUBLE", "FLOAT"):
            return float(written.replace(",", "").rstrip("%")), None
        if kind == "BOOLEAN":
            return written == "true", None
        if kind == "DATE":
            return dt.date.fromisoformat(written).isoformat(), None
    except ValueError:
        pass
    return None, f"could not read {written!r} as {kind}"
