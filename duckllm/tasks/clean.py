"""llm_clean: fix typos, spacing, casing and formats in a value; unchanged is a valid answer."""
from __future__ import annotations

import math

from duckllm.confidence import mean_token_prob
from duckllm.runtime import Write, single
from duckllm.tasks import TRUNCATED, Task, canonical, examples, instructed, notes
from duckllm.tasks.declare import (
    CONFIDENCE,
    EMPTY_TEXT,
    EXAMPLES,
    INSTRUCTIONS,
    MODEL,
    NOTE,
    OPTIONS,
    TEXT,
    Field,
    Function,
)

DECLARATION = Function(
    "llm_clean",
    params=(TEXT, INSTRUCTIONS, OPTIONS, EXAMPLES, MODEL),
    result=(Field("value", "VARCHAR"), CONFIDENCE, Field("changed", "BOOLEAN"), NOTE),
    blank={"value": None, "confidence": None, "changed": None, "note": EMPTY_TEXT},
)
FUNCTION = DECLARATION.name
VERSION = 1

SYSTEM = ("You clean one messy data value. Fix typos, spacing, casing and formatting, keeping its "
          "meaning and language. Reply with the cleaned value only. If it is already clean, reply "
          "with it unchanged.")
# Worked examples, shown as earlier turns: small models follow examples better than rules.
DEFAULT_EXAMPLES = [
    ("jOHN   smiht", "John Smith"),
    ("new yrok city", "New York City"),
    ("Acme Corp.", "Acme Corp."),
]
MAX_TOKENS, PER_INPUT_TOKEN = 16, 1.5   # a cleaned value is about as long as its input
LIMIT_HIT = "answer cut at its token limit"


def from_sql(args: dict) -> Task:
    args = dict(args)
    return build(args.pop("instructions", None), args)


def build(instructions=None, options=None) -> Task:
    system, opts, instructions = instructed(FUNCTION, SYSTEM, instructions, options, DECLARATION.options)
    given = examples.parse(FUNCTION, opts.get("examples"))
    messages = [("system", system)] + examples.as_turns(given or DEFAULT_EXAMPLES, str, str)
    limit = lambda n: MAX_TOKENS + math.ceil(PER_INPUT_TOKEN * n)

    def read(answer, text):
        generation = answer.value
        value = generation.text.strip()
        return {"value": value, "confidence": mean_token_prob(generation.token_logprobs),
                "changed": value != text,
                "note": notes(answer.truncated and TRUNCATED, generation.hit_limit and LIMIT_HIT)}

    return Task(
        name=FUNCTION, version=VERSION, messages=tuple(messages),
        program=lambda text, n: single(Write(limit(n))), answer_tokens=lambda n: limit(n) + 1, read=read,
        empty=DECLARATION.blank,
        model=opts.get("model"), key=canonical(FUNCTION, VERSION, instructions, opts),
    )
