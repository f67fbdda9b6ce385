"""Tasks are data plus small functions: the prompt, the answer space, and how to read an answer.

A task is built once per distinct (arguments, options) of a call, validated at that edge, and
then applied to many rows by the engine. It knows nothing of DuckDB or llama.cpp.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ArgumentError


@dataclass(frozen=True)
class Choose:
    options: tuple[str, ...]
    score_rest: bool = True        # score every token of the chosen option (mean-token confidence)


@dataclass(frozen=True)
class Generate:
    max_tokens: int
    per_input_token: float = 0.0   # extra tokens allowed per token of input (cleaning echoes its input)


@dataclass(frozen=True)
class Task:
    name: str                                   # the SQL function, e.g. 'llm_classify'
    version: int                                # bump when the prompt changes: keys cached results
    messages: tuple[tuple[str, str], ...]       # shared messages before the row's user turn
    row_before: str                             # text before the row inside its user turn
    row_after: str
    request: Choose | Generate
    read: Callable[[Any, str], dict]            # runtime answer, row text -> result fields
    empty: dict                                 # result for an empty or whitespace-only text
    model: str | None                           # catalog name or .gguf path; None = default
    key: str                                    # canonical JSON of everything that shapes the answer


def parse_options(function: str, raw: str | dict | None, allowed: set[str]) -> dict:
    """Options from SQL arrive as JSON (named parameters and an options STRUCT, merged)."""
    if raw is None:
        return {}
    given = json.loads(raw) if isinstance(raw, str) else dict(raw)
    nested = given.pop("options", None) or {}
    if not isinstance(nested, dict):
        raise ArgumentError(f"{function}: options must be a STRUCT such as {{'instructions': '...'}}, got {nested!r}")
    merged = {k: v for k, v in {**nested, **given}.items() if v is not None}
    unknown = sorted(set(merged) - allowed)
    if unknown:
        raise ArgumentError(f"{function}: unknown option {unknown[0]!r}; the options are {', '.join(sorted(allowed))}")
    return merged


def canonical(*parts) -> str:
    return json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

