"""llm_classify: one label out of a fixed set, with the model's confidence in it."""
from __future__ import annotations

from ..confidence import choice_prob, mean_token_prob
from ..errors import ArgumentError
from . import Choose, Task, canonical, parse_options

FUNCTION = "llm_classify"
VERSION = 2
OPTIONS = {"descriptions", "instructions", "model", "confidence"}
CONFIDENCE_METHODS = ("mean_token", "choice")
DEFAULT_CONFIDENCE = "mean_token"  # higher mean AUROC on the default model (README, Confidence)

DEFAULT_INSTRUCTIONS = "Classify the text the user sends into exactly one of the labels below."


def from_sql(args: dict) -> Task:
    args = dict(args)
    return build(args.pop("labels", None), args)


def build(labels, options=None) -> Task:
    labels = validate_labels(labels)
    opts = parse_options(FUNCTION, options, OPTIONS)
    descriptions = validate_descriptions(labels, opts.get("descriptions"))
    method = opts.get("confidence", DEFAULT_CONFIDENCE)
    if method not in CONFIDENCE_METHODS:
        raise ArgumentError(f"{FUNCTION}: confidence must be one of {', '.join(CONFIDENCE_METHODS)}, got {method!r}")
    instructions = opts.get("instructions") or DEFAULT_INSTRUCTIONS
    lines = [f"- {label}: {descriptions[label]}" if label in descriptions else f"- {label}" for label in labels]
    system = (f"{instructions}\n\nLabels:\n" + "\n".join(lines) +
              "\n\nAnswer with one label from the list, written exactly as above, and nothing else.")

    def read(choice, text):
        confidence = (mean_token_prob(choice.token_logprobs) if method == "mean_token"
                      else choice_prob(choice.choice_logprob))
        note = "text truncated to fit the model's context" if choice.truncated else None
        return {"label": labels[choice.index], "confidence": confidence, "note": note}

    return Task(
        name=FUNCTION, version=VERSION, messages=(("system", system),),
        row_before="", row_after="", request=Choose(tuple(labels), score_rest=method == "mean_token"), read=read,
        empty={"label": None, "confidence": None, "note": "empty text"},
        model=opts.get("model"), key=canonical(FUNCTION, VERSION, labels, opts),
    )


def validate_labels(labels) -> list[str]:
    example = "['refund', 'delivery']"
    if labels is None:
        raise ArgumentError(f"{FUNCTION}: labels is NULL; pass a list of labels such as {example}")
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
        raise ArgumentError(f"{FUNCTION}: labels must be a list such as {example}, got {labels!r}")
    if not labels:
        raise ArgumentError(f"{FUNCTION}: labels is an empty list; pass at least one label, such as {example}")
    seen = set()
    for label in labels:
        if label is None or not str(label).strip():
            raise ArgumentError(f"{FUNCTION}: labels contains a NULL or empty label; remove it from {list(labels)!r}")
        if label in seen:
            raise ArgumentError(f"{FUNCTION}: label {label!r} appears twice in labels; each label must be distinct")
        seen.add(label)
    return list(labels)


def validate_descriptions(labels: list[str], descriptions) -> dict[str, str]:
    """Descriptions as a {label: text} STRUCT/MAP, or a list aligned with labels."""
    if descriptions is None:
        return {}
    if isinstance(descriptions, list):
        if len(descriptions) != len(labels):
            raise ArgumentError(f"{FUNCTION}: descriptions has {len(descriptions)} entries for {len(labels)} labels; "
                                f"give one per label, or a STRUCT such as {{'{labels[0]}': '...'}}")
        return {label: d for label, d in zip(labels, descriptions) if d}
    if isinstance(descriptions, dict):
        unknown = [k for k in descriptions if k not in labels]
        if unknown:
            raise ArgumentError(f"{FUNCTION}: descriptions names {unknown[0]!r}, which is not one of the labels")
        return {k: v for k, v in descriptions.items() if v}
    raise ArgumentError(f"{FUNCTION}: descriptions must be a STRUCT {{label: description}} or a list, got {descriptions!r}")
