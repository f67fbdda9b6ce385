"""llm_match: do two records describe the same real-world thing? Yes or no, with confidence."""
from __future__ import annotations

import json

from duckllm import proxy
from duckllm.confidence import choice_prob
from duckllm.errors import ArgumentError
from duckllm.runtime import Parts, Pick, single
from duckllm.tasks import TRUNCATED, Task, canonical, examples, instructed
from duckllm.tasks.declare import (
    AGREEMENT,
    ANSWERED_BY,
    CONFIDENCE,
    EXAMPLES,
    INSTRUCTIONS,
    MODEL,
    NOTE,
    OPTIONS,
    Field,
    Function,
    Param,
)

# The pair travels to the UDF as one JSON text (pair() below), so dedup and the cache key on it.
DECLARATION = Function(
    "llm_match",
    params=(Param("a", "VARCHAR", positional=True, row=True), Param("b", "VARCHAR", positional=True, row=True),
            INSTRUCTIONS, OPTIONS, EXAMPLES, MODEL, *AGREEMENT),
    result=(Field("match", "BOOLEAN"), CONFIDENCE, NOTE, ANSWERED_BY),
    blank={"match": None, "confidence": None, "note": "empty record", "answered_by": None},
)
FUNCTION = DECLARATION.name
VERSION = 4     # 4: a pair too long for the context is cut from both records, not only the second
ANSWERS = ("Yes", "No")   # as chat models write them: lower case pulled answers away (bench)
# Confidence is P(the answer | Yes or No): the probability of the one answer token over the
# whole vocabulary also holds the mass of other spellings, and says less.

SYSTEM = ("Decide whether the two records the user sends refer to the same real-world entity: the "
          "same product, person, organization, place or publication, even when written differently "
          "or with missing details. Answer Yes or No, and nothing else.")


def pair(a: str, b: str) -> str:
    """How the SQL macro hands a pair to the UDF: one text, so dedup and cache key on the pair.
    Written as DuckDB's to_json writes it (no spaces, UTF-8 kept), so a pair from Python (the
    calibration, the benches) and the same pair from SQL share their cached answers."""
    return json.dumps([a, b], ensure_ascii=False, separators=(",", ":"))


def render(text: str) -> Parts:
    a, b = json.loads(text)
    return Parts(f"Record A: {a}", f"\nRecord B: {b}")


def from_sql(args: dict) -> Task:
    args = dict(args)
    return build(args.pop("instructions", None), args)


def build(instructions=None, options=None) -> Task:
    system, opts, instructions = instructed(FUNCTION, SYSTEM, instructions, options, DECLARATION.options)
    agreement = proxy.options(FUNCTION, opts)
    given = examples.parse(FUNCTION, opts.get("examples"), _check_example)
    messages = [("system", system)] + examples.as_turns(
        [(pair(*_example_pair(i)), _yes_no(o)) for i, o in given], render, str)

    def read(answer, text):
        choice = answer.value
        return {"match": choice.index == 0, "confidence": choice_prob(choice.choice_logprob),
                "note": TRUNCATED if answer.truncated else None, "answered_by": None}   # see classify

    return Task(
        name=FUNCTION, version=VERSION, messages=tuple(messages), render=render,
        program=lambda text, n: single(Pick(ANSWERS)), answer_tokens=lambda n: 4, read=read,
        empty=DECLARATION.blank,
        model=opts.get("model"), key=canonical(FUNCTION, VERSION, instructions, opts),
        agreement=agreement and proxy.Agreement(
            *agreement, classes=ANSWERS, features="pair", label_of=lambda result: ANSWERS[not result["match"]],
            result_of=lambda answer, p: {"match": answer == ANSWERS[0], "confidence": p, "note": None}),
    )


def _yes_no(output: str) -> str:
    return ANSWERS[0] if output.strip().lower() in ("yes", "true", "match", "1") else ANSWERS[1]


def _check_example(output: str) -> str | None:
    ok = ("yes", "no", "true", "false", "match", "no_match", "1", "0")
    return None if output.strip().lower() in ok else f"the output must be one of {', '.join(ok)}"


def _example_pair(given: str) -> tuple[str, str]:
    """An example's input is the pair as a two-element JSON list, or two lines."""
    try:
        a, b = json.loads(given)
        return str(a), str(b)
    except (ValueError, TypeError):
        a, _, b = given.partition("\n")
        if not b:
            raise ArgumentError(f"{FUNCTION}: an example's input must hold both records: a JSON list "
                                f"['record a', 'record b'] or the two records on two lines; got {given!r}")
        return a, b
