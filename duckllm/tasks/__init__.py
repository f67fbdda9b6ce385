"""Tasks are data plus small functions: the prompt, the answer space, and how to read an answer.

A task is built once per distinct (arguments, options) of a call, validated at that edge, and
then applied to many rows by the engine. It knows nothing of DuckDB or llama.cpp. Each task
module also declares its SQL function (DECLARATION, see declare.py): its parameters, options,
result fields and blank answer, from which the SQL layer makes the macros and result types.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from duckllm.errors import ArgumentError
from duckllm.runtime import Answer, Program


@dataclass(frozen=True)
class Task:
    name: str                                   # the SQL function, e.g. 'llm_classify'
    version: int                                # bump when the prompt changes: keys cached results
    messages: tuple[tuple[str, str], ...]       # shared messages before the row's user turn
    program: Callable[[str, int], Program]      # row text, its token count -> the answer program
    answer_tokens: Callable[[int], int]         # most tokens the answer takes, for n text tokens
    read: Callable[[Answer, str], dict]         # the program's answer, row text -> result fields
    empty: dict                                 # result for an empty or whitespace-only text
    model: str | None                           # catalog name or .gguf path; None = default
    key: str                                    # canonical JSON of everything that shapes the answer
    render: Callable[[str], str] = str          # the row's user message, from its text
    prepare: Callable[[list[str]], Any] = lambda texts: None   # batch work for a call's texts first
    row_turns: Callable[[str], list[tuple[str, str]]] | None = None   # chat turns of the row's own
                                                # (its nearest examples) between the shared ones and it
    contextual: Any = None                      # calibrated without labels: its labels and program given
                                                # their content-free prior (confidence/contextual.py)
    finish: Callable[[dict], dict] = lambda result: result   # each delivered result, after its
                                                # confidences are calibrated (classify_multi's threshold)
    agreement: Any = None                       # duckllm.proxy.Agreement: a proxy may answer rows;
                                                # not part of key, as it changes no model answer


# options every function reads as text, and an example of each for the error message
TEXT_OPTIONS = {"instructions": "'Sort support tickets.'", "model": "'smollm2-135m' or a .gguf path"}


def parse_options(function: str, raw: str | dict | None, allowed: set[str]) -> dict:
    """Options from SQL arrive as JSON (named parameters and an options STRUCT, merged)."""
    if raw is None:
        return {}
    given = json.loads(raw) if isinstance(raw, str) else dict(raw)
    nested = given.pop("options", None) or {}
    if not isinstance(nested, dict):
        raise ArgumentError(f"{function}: options must be a STRUCT such as {{'instructions': '...'}}, got {nested!r}")
    # a named parameter left NULL (the macro passes them all) must not hide the STRUCT's value
    named = {k: v for k, v in given.items() if v is not None}
    merged = {k: v for k, v in {**nested, **named}.items() if v is not None}
    unknown = sorted(set(merged) - allowed)
    if unknown:
        raise ArgumentError(f"{function}: unknown option {unknown[0]!r}; the options are {', '.join(sorted(allowed))}")
    for name, example in TEXT_OPTIONS.items():
        if name in merged and not isinstance(merged[name], str):
            raise ArgumentError(f"{function}: {name} must be text such as {example}, got {merged[name]!r}")
    return merged


def instructed(function: str, system: str, instructions, options, allowed: set[str]) -> tuple[str, dict, str | None]:
    """(system prompt with the user's instructions after it, options, instructions): the
    instructions come as an argument or as an option."""
    if instructions is not None and not isinstance(instructions, str):
        raise ArgumentError(f"{function}: instructions must be text, got {instructions!r}")
    opts = parse_options(function, options, allowed)
    instructions = instructions or opts.get("instructions")
    return system + (f"\n\n{instructions}" if instructions else ""), opts, instructions


def whole_number(function: str, name: str, value, high: int | None = None) -> int | None:
    """An integer option from 1 (to high, when given); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (high and value > high):
        wanted = f"an integer from 1 to {high}" if high else "a positive integer such as 4"
        raise ArgumentError(f"{function}: {name} must be {wanted}, got {value!r}")
    return value


def listing(names, descriptions: dict[str, str]) -> str:
    """Labels (or types) as the prompt lists them: one per line, with its description if any."""
    return "\n".join(f"- {n}: {descriptions[n]}" if n in descriptions else f"- {n}" for n in names)


def canonical(*parts) -> str:
    return json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


TRUNCATED = "text truncated to fit the model's context"


def notes(*problems: str | None) -> str | None:
    """A result's note: its problems joined, or None when there are none."""
    return "; ".join(p for p in problems if p) or None
