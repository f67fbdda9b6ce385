"""llm_clean: fix typos, spacing, casing and formats in a value; unchanged is a valid answer."""
from __future__ import annotations

from ..confidence import mean_token_prob
from ..errors import ArgumentError
from . import Generate, Task, canonical, parse_options

FUNCTION = "llm_clean"
VERSION = 1
OPTIONS = {"instructions", "model"}

SYSTEM = ("You clean one messy data value. Fix typos, spacing, casing and formatting, keeping its "
          "meaning and language. Reply with the cleaned value only. If it is already clean, reply "
          "with it unchanged.")
# Worked examples, shown as earlier turns: small models follow examples better than rules.
EXAMPLES = (
    ("jOHN   smiht", "John Smith"),
    ("new yrok city", "New York City"),
    ("Acme Corp.", "Acme Corp."),
)


def from_sql(args: dict) -> Task:
    args = dict(args)
    return build(args.pop("instructions", None), args)


def build(instructions=None, options=None) -> Task:
    if instructions is not None and not isinstance(instructions, str):
        raise ArgumentError(f"{FUNCTION}: instructions must be text, got {instructions!r}")
    opts = parse_options(FUNCTION, options, OPTIONS)
    instructions = instructions or opts.get("instructions")
    system = SYSTEM + (f"\n\n{instructions}" if instructions else "")
    messages = [("system", system)]
    for dirty, clean in EXAMPLES:
        messages += [("user", dirty), ("assistant", clean)]

    def read(generation, text):
        value = generation.text.strip()
        notes = []
        if generation.truncated:
            notes.append("text truncated to fit the model's context")
        if generation.hit_limit:
            notes.append("answer cut at its token limit")
        return {"value": value, "confidence": mean_token_prob(generation.token_logprobs),
                "changed": value != text, "note": "; ".join(notes) or None}

    return Task(
        name=FUNCTION, version=VERSION, messages=tuple(messages), row_before="", row_after="",
        request=Generate(max_tokens=16, per_input_token=1.5), read=read,
        empty={"value": None, "confidence": None, "changed": None, "note": "empty text"},
        model=opts.get("model"), key=canonical(FUNCTION, VERSION, instructions, opts),
    )
