"""llm_entities: named entities of given types, each copied from the text, with confidences.

The answer is one `TYPE: text` line per entity: the type is picked from the given types (or
the answer ends), the text is decoded as a span that must occur in the row's text.
"""
from __future__ import annotations

from duckllm.confidence import mean_token_prob
from duckllm.runtime import Pick, Write, answer_bound
from duckllm.tasks import Task, canonical, listing, parse_options, whole_number
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
    "llm_entities",
    params=(TEXT, Param("types", "VARCHAR[]", default="['PER', 'ORG', 'LOC', 'MISC']", option=False),
            DESCRIPTIONS, INSTRUCTIONS, Param("max_entities", "INTEGER"), OPTIONS, MODEL),
    result=(Field("entities", ListOf(Struct((Field("text", "VARCHAR"), Field("type", "VARCHAR"), CONFIDENCE)))),),
    blank={"entities": None},
    returns="list",
)
FUNCTION = DECLARATION.name
VERSION = 2
MAX_ENTITIES, MAX_ENTITIES_LIMIT = 16, 64
SPAN_TOKENS = 12
NONE = "none"
KNOWN = {   # CoNLL-2003's types, described, so the bare abbreviations mean something to a model
    "PER": "a person's name", "ORG": "an organization: company, team, agency, party",
    "LOC": "a location: country, city, region, river, mountain",
    "MISC": "another named thing: nationality, language, event, product, title",
}
EXAMPLES = [   # shown as earlier turns when the types are CoNLL's: one text with entities, one without
    ("Angela Merkel met Apple's Tim Cook in Berlin before the World Cup.",
     [("PER", "Angela Merkel"), ("ORG", "Apple"), ("PER", "Tim Cook"), ("LOC", "Berlin"), ("MISC", "World Cup")]),
    ("see you tomorrow at lunch, bring the usual", []),
]

SYSTEM = ("Find the named entities in the text the user sends. Entity types:\n{types}\n\n"
          "Write one entity per line, in the order they appear, as `TYPE: text`, copying the text "
          "exactly from the input. Write none when the text names no entity.")


def from_sql(args: dict) -> Task:
    args = dict(args)
    return build(args.pop("types", None), args)


def build(types, options=None) -> Task:
    types = validate_labels(types, FUNCTION, "types", example="['PER', 'ORG', 'LOC', 'MISC']")
    opts = parse_options(FUNCTION, options, DECLARATION.options)
    descriptions = {**{t: KNOWN[t] for t in types if t in KNOWN},
                    **validate_descriptions(types, opts.get("descriptions"), FUNCTION)}
    limit = whole_number(FUNCTION, "max_entities", opts.get("max_entities"), MAX_ENTITIES_LIMIT) or MAX_ENTITIES
    system = SYSTEM.format(types=listing(types, descriptions))
    system += f"\n\n{opts['instructions']}" if opts.get("instructions") else ""
    messages = [("system", system)]
    if set(KNOWN) <= set(types):
        for example_text, example_entities in EXAMPLES:
            messages += [("user", example_text),
                         ("assistant", "\n".join(f"{t}: {span}" for t, span in example_entities) or NONE)]

    def program(text, n_tokens):
        found = []
        for i in range(limit):
            # 'none' first: small models say there are none more readily than they end at once
            first = i == 0 and NONE not in types
            kind = yield Pick(tuple(types) + ((NONE,) if first else ()), stop=":", or_end=not first)
            if kind.index >= len(types):
                break
            span = yield Write(SPAN_TOKENS, kind="span", source=text, stop="\n", or_end=True)
            entity = span.text.strip()
            if not entity or any(entity == e[0] for e in found):
                break            # lost or repeating itself: what it found so far stands
            found.append((entity, types[kind.index], mean_token_prob(kind.token_logprobs + span.token_logprobs)))
            if span.ended:
                break
        return found

    per_entity = max(answer_bound(t) for t in types) + 2 + SPAN_TOKENS + 2

    def read(answer, text):
        return {"entities": [{"text": t, "type": k, "confidence": c} for t, k, c in answer.value]}

    return Task(
        name=FUNCTION, version=VERSION, messages=tuple(messages), program=program,
        answer_tokens=lambda n: per_entity * limit + 2, read=read, empty=DECLARATION.blank,
        model=opts.get("model"), key=canonical(FUNCTION, VERSION, types, opts),
    )
