"""llm_classify_multi: every label that applies to a text (none, one or several).

The answer is one `label: yes|no` line per label: the labels are fed, each yes/no decided,
so every label gets its own probability of applying.
"""
from __future__ import annotations

import math

from duckllm.errors import ArgumentError
from duckllm.runtime import Pick, Say, answer_bound
from duckllm.tasks import Task, canonical, listing, parse_options
from duckllm.tasks.classify import validate_descriptions, validate_labels
from duckllm.tasks.declare import (
    CONFIDENCE,
    DESCRIPTIONS,
    INSTRUCTIONS,
    MODEL,
    OPTIONS,
    TEXT,
    Field,
    Function,
    ListOf,
    Param,
    Struct,
)

DECLARATION = Function(
    "llm_classify_multi",
    params=(TEXT, Param("labels", "VARCHAR[]", positional=True), DESCRIPTIONS, INSTRUCTIONS,
            Param("threshold", "DOUBLE"), OPTIONS, MODEL),
    result=(Field("labels", ListOf(Struct((Field("label", "VARCHAR"), CONFIDENCE)))),),
    blank={"labels": None},
    returns="list",
)
FUNCTION = DECLARATION.name
VERSION = 2     # 2: an answer keeps every label's probability; the threshold applies on delivery
DEFAULT_THRESHOLD = 0.5

SYSTEM = ("{instructions}\n\nLabels:\n{labels}\n\nAnswer with one line per label, in this order, as "
          "`label: yes` when it applies to the text and `label: no` when it does not. Several labels "
          "may apply, or none.")
DEFAULT_INSTRUCTIONS = "Decide which of the labels below apply to the text the user sends."


def from_sql(args: dict) -> Task:
    args = dict(args)
    return build(args.pop("labels", None), args)


def build(labels, options=None) -> Task:
    labels = validate_labels(labels, FUNCTION)
    opts = parse_options(FUNCTION, options, DECLARATION.options)
    descriptions = validate_descriptions(labels, opts.get("descriptions"), FUNCTION)
    threshold = opts.get("threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ArgumentError(f"{FUNCTION}: threshold must be a number from 0 to 1, got {threshold!r}")
    system = SYSTEM.format(instructions=opts.get("instructions") or DEFAULT_INSTRUCTIONS,
                           labels=listing(labels, descriptions))

    def program(text, n_tokens):
        applies = []
        for i, label in enumerate(labels):
            yield Say(f"{label}:")
            choice = yield Pick((" yes", " no"), stop="\n" if i < len(labels) - 1 else None, score_rest=False)
            p_yes = math.exp(choice.choice_logprob) if choice.index == 0 else 1 - math.exp(choice.choice_logprob)
            applies.append(p_yes)
        return applies

    bound = sum(answer_bound(f"{label}:") + 4 for label in labels)

    def read(answer, text):
        return {"labels": [{"label": label, "confidence": p} for label, p in zip(labels, answer.value)]}

    def finish(result):
        """The labels that apply: at least threshold sure, after any calibration of each label."""
        kept = [x for x in result["labels"] if x["confidence"] is not None and x["confidence"] >= threshold]
        return {**result, "labels": kept}

    # the threshold only filters what is delivered: calls that differ in it share cached answers
    # and a calibration
    return Task(
        name=FUNCTION, version=VERSION, messages=(("system", system),), program=program,
        answer_tokens=lambda n: bound, read=read, empty=DECLARATION.blank, finish=finish,
        model=opts.get("model"),
        key=canonical(FUNCTION, VERSION, labels, {k: v for k, v in opts.items() if k != "threshold"}),
    )
