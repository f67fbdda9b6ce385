"""llm_enrich: a short free answer to a question about each text."""
from __future__ import annotations

from duckllm.confidence import mean_token_prob
from duckllm.errors import ArgumentError
from duckllm.runtime import Write, single
from duckllm.tasks import (
    TRUNCATED,
    Task,
    canonical,
    examples,
    notes,
    parse_options,
    whole_number,
)
from duckllm.tasks.declare import (
    CONFIDENCE,
    EMPTY_TEXT,
    EXAMPLES,
    MODEL,
    NOTE,
    OPTIONS,
    TEXT,
    Field,
    Function,
    Param,
)

DECLARATION = Function(
    "llm_enrich",
    params=(TEXT, Param("question", "VARCHAR", positional=True), Param("max_tokens", "INTEGER", option=False),
            EXAMPLES, OPTIONS, MODEL),
    result=(Field("value", "VARCHAR"), CONFIDENCE, Field("truncated", "BOOLEAN"), NOTE),
    blank={"value": None, "confidence": None, "truncated": None, "note": EMPTY_TEXT},
)
FUNCTION = DECLARATION.name
VERSION = 1
DEFAULT_MAX_TOKENS = 32
MAX_TOKENS_LIMIT = 1024

SYSTEM = ("Answer the question below about the text the user sends. Reply with the answer only, as "
          "briefly as the question allows, without repeating the question. If the text does not "
          "tell, answer with your best guess.\n\nQuestion: {question}")


def from_sql(args: dict) -> Task:
    args = dict(args)
    return build(args.pop("question", None), args.pop("max_tokens", None), args)


def build(question, max_tokens=None, options=None) -> Task:
    if not isinstance(question, str) or not question.strip():
        raise ArgumentError(f"{FUNCTION}: question must be a non-empty text such as 'Which country is this "
                            f"address in?', got {question!r}")
    max_tokens = whole_number(FUNCTION, "max_tokens", max_tokens, MAX_TOKENS_LIMIT) or DEFAULT_MAX_TOKENS
    opts = parse_options(FUNCTION, options, DECLARATION.options)
    given = examples.parse(FUNCTION, opts.get("examples"))
    messages = [("system", SYSTEM.format(question=question.strip()))] + examples.as_turns(given, str, str)

    def read(answer, text):
        generation = answer.value
        return {"value": generation.text.strip(), "confidence": mean_token_prob(generation.token_logprobs),
                "truncated": generation.hit_limit, "note": notes(answer.truncated and TRUNCATED)}

    return Task(
        name=FUNCTION, version=VERSION, messages=tuple(messages),
        program=lambda text, n: single(Write(max_tokens)), answer_tokens=lambda n: max_tokens + 1, read=read,
        empty=DECLARATION.blank,
        model=opts.get("model"), key=canonical(FUNCTION, VERSION, question, max_tokens, opts),
    )
