"""llm_classify: one label out of a fixed set, with the model's confidence in it."""
from __future__ import annotations

from duckllm import proxy
from duckllm.confidence import choice_prob, mean_token_prob, sequence_prob
from duckllm.confidence.contextual import Contextual
from duckllm.errors import ArgumentError
from duckllm.runtime import Pick, answer_bound
from duckllm.tasks import (
    TRUNCATED,
    Task,
    canonical,
    examples,
    listing,
    parse_options,
    whole_number,
)
from duckllm.tasks.declare import (
    AGREEMENT,
    ANSWERED_BY,
    CONFIDENCE,
    DESCRIPTIONS,
    EMPTY_TEXT,
    EXAMPLES,
    INSTRUCTIONS,
    MODEL,
    NOTE,
    OPTIONS,
    TEXT,
    Field,
    Function,
    Param,
)

DECLARATION = Function(
    "llm_classify",
    params=(TEXT, Param("labels", "VARCHAR[]", positional=True), OPTIONS, DESCRIPTIONS, INSTRUCTIONS, EXAMPLES,
            Param("nearest", "INTEGER"), Param("preselect", "INTEGER"), MODEL, Param("confidence", "VARCHAR"),
            Param("contextual", "BOOLEAN"), *AGREEMENT),
    result=(Field("label", "VARCHAR"), CONFIDENCE, NOTE, ANSWERED_BY),
    blank={"label": None, "confidence": None, "note": EMPTY_TEXT, "answered_by": None},
)
FUNCTION = DECLARATION.name
VERSION = 3     # 3: the default confidence is sequence, not mean_token
CONFIDENCE_METHODS = ("mean_token", "choice", "sequence")
# pooled AUROC 0.72 vs 0.62 (mean_token) over sms_spam, ag_news, banking77 and symptom2disease
# on the default model, ECE 0.11 vs 0.24 (docs/calibration.md; bench/calibration.py signals)
DEFAULT_CONFIDENCE = "sequence"
SCORED = {"mean_token": mean_token_prob, "sequence": sequence_prob}   # methods that score every token
PRESELECT_ABOVE = 200   # label sets larger than this are narrowed per row by default ...
PRESELECT_TOP = 32      # ... to this many labels, the most similar to the row's text

DEFAULT_INSTRUCTIONS = "Classify the text the user sends into exactly one of the labels below."
ANSWER_RULE = "Answer with one label from the list, written exactly as above, and nothing else."


def from_sql(args: dict) -> Task:
    args = dict(args)
    return build(args.pop("labels", None), args)


def build(labels, options=None) -> Task:
    labels = validate_labels(labels)
    opts = parse_options(FUNCTION, options, DECLARATION.options)
    agreement = proxy.options(FUNCTION, opts)
    descriptions = validate_descriptions(labels, opts.get("descriptions"))
    method = opts.get("confidence", DEFAULT_CONFIDENCE)
    if method not in CONFIDENCE_METHODS:
        raise ArgumentError(f"{FUNCTION}: confidence must be one of {', '.join(CONFIDENCE_METHODS)}, got {method!r}")
    known = set(labels)
    pairs = examples.parse(FUNCTION, opts.get("examples"),
                           lambda out: None if out in known else "the output is not one of the labels")
    k_examples = whole_number(FUNCTION, "nearest", opts.get("nearest"))
    if k_examples and not pairs:
        raise ArgumentError(f"{FUNCTION}: nearest picks from the examples; pass examples := {examples.SHAPE}")
    top = whole_number(FUNCTION, "preselect", opts.get("preselect"))
    if top is None and len(labels) > PRESELECT_ABOVE:
        top = PRESELECT_TOP
    top = top if top and top < len(labels) else None
    instructions = opts.get("instructions") or DEFAULT_INSTRUCTIONS
    prepares = []     # batch work before a call's rows are rendered: embeddings
    if top:     # each row lists its own candidates, so the shared prompt lists none
        system = f"{instructions}\n\nThe labels to choose from come with each text. {ANSWER_RULE}"
        similar = examples.Nearest([f"{n}: {descriptions[n]}" if n in descriptions else n.replace("_", " ")
                                    for n in labels], top)
        candidates = lambda text: [labels[i] for i in similar(text)]
        prepares.append(similar.prepare)
        render_text = lambda text: f"Labels:\n{listing(candidates(text), descriptions)}\n\nText: {text}"
    else:
        system = f"{instructions}\n\nLabels:\n{listing(labels, descriptions)}\n\n{ANSWER_RULE}"
        candidates = lambda text: labels
        render_text = str
    messages = [("system", system)]
    row_turns = None
    if k_examples:
        prepare_turns, row_turns = examples.nearest_turns(pairs, k_examples, render_text, str)
        prepares.append(prepare_turns)
    else:
        messages += examples.as_turns(pairs, render_text, str)
    bound = max(answer_bound(label) for label in labels)
    calibrated = _contextual(opts.get("contextual"), top, k_examples)

    def with_prior(prior: dict[str, float] | None):
        def program(text, n_tokens):
            options = candidates(text)
            choice = yield Pick(tuple(options), score_rest=method in SCORED,
                                prior=tuple(prior[o] for o in options) if prior else None)
            return options[choice.index], choice
        return program

    def read(answer, text):
        label, choice = answer.value
        confidence = (SCORED[method](choice.token_logprobs) if method in SCORED
                      else choice_prob(choice.choice_logprob))
        return {"label": label, "confidence": confidence, "note": TRUNCATED if answer.truncated else None,
                "answered_by": None}     # set by a call with agreement (duckllm.proxy)

    return Task(
        name=FUNCTION, version=VERSION, messages=tuple(messages), program=with_prior(None),
        contextual=Contextual(tuple(labels), with_prior) if calibrated else None,
        answer_tokens=lambda n: bound, read=read, render=render_text, row_turns=row_turns,
        prepare=lambda texts: [prepare(texts) for prepare in prepares],
        empty=DECLARATION.blank,
        model=opts.get("model"), key=canonical(FUNCTION, VERSION, labels, opts),
        agreement=agreement and proxy.Agreement(
            *agreement, classes=tuple(labels), label_of=lambda result: result["label"],
            result_of=lambda label, p: {"label": label, "confidence": p, "note": None}),
    )


def _contextual(value, preselect, nearest) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ArgumentError(f"{FUNCTION}: contextual must be true or false, got {value!r}")
    if value and (preselect or nearest):
        raise ArgumentError(f"{FUNCTION}: contextual calibration needs the same prompt for every row; "
                            f"leave out {'preselect' if preselect else 'nearest'}, or contextual")
    return value


def validate_labels(labels, function: str = FUNCTION, what: str = "labels",
                    example: str = "['refund', 'delivery']") -> list[str]:
    if labels is None:
        raise ArgumentError(f"{function}: {what} is NULL; pass a list of {what} such as {example}")
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
        raise ArgumentError(f"{function}: {what} must be a list such as {example}, got {labels!r}")
    if not labels:
        raise ArgumentError(f"{function}: {what} is an empty list; pass at least one, such as {example}")
    seen = set()
    for label in labels:
        if label is None or not str(label).strip():
            raise ArgumentError(f"{function}: {what} contains a NULL or empty entry; remove it from {list(labels)!r}")
        if not isinstance(label, str):
            raise ArgumentError(f"{function}: {what} must be text, but {label!r} is not; write them as "
                                f"strings or cast the list: {what}::VARCHAR[]")
        if label in seen:
            raise ArgumentError(f"{function}: label {label!r} appears twice in {what}; each must be distinct")
        seen.add(label)
    return list(labels)


def validate_descriptions(labels: list[str], descriptions, function: str = FUNCTION) -> dict[str, str]:
    """Descriptions as a {label: text} STRUCT/MAP, or a list aligned with labels."""
    if descriptions is None:
        return {}
    if isinstance(descriptions, list):
        if len(descriptions) != len(labels):
            raise ArgumentError(f"{function}: descriptions has {len(descriptions)} entries for {len(labels)} labels; "
                                f"give one per label, or a STRUCT such as {{'{labels[0]}': '...'}}")
        return {label: d for label, d in zip(labels, descriptions) if d}
    if isinstance(descriptions, dict):
        unknown = [k for k in descriptions if k not in labels]
        if unknown:
            raise ArgumentError(f"{function}: descriptions names {unknown[0]!r}, which is not one of the labels")
        return {k: v for k, v in descriptions.items() if v}
    raise ArgumentError(f"{function}: descriptions must be a STRUCT {{label: description}} or a list, got {descriptions!r}")
