"""A learned proxy answers the rows it is sure of, with a stated agreement with the model.

`llm_classify(text, labels, agreement := 0.95)` (and llm_match) lets a fast classifier, trained on
the model's own answers to the same task, answer the rows on which it agrees with the model at
least 95% of the time, with 95% confidence (agreement_confidence); the model answers the rest.

- sampling: which rows go to the model to train and audit the proxy (a keyed hash of the text)
- features: hashed n-grams of a row, or similarities of a pair of records
- classifier: the cross-fitted classifier and its calibrated confidences
- bound: the score threshold, from a Clopper-Pearson bound tested in a fixed sequence
- examples: the model's answers kept as training rows beside the result cache
- cascade: one engine call: sample, train, answer what the proxy may, send the rest to the model
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from duckllm.errors import ArgumentError

DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Agreement:
    """What a call asked of the proxy, and how its task's answers map to the proxy's classes."""
    target: float                               # agreement with the model among proxy-answered rows
    confidence: float                           # the confidence that this holds
    classes: tuple[str, ...]                    # what the proxy chooses among
    label_of: Callable[[dict], str]             # a task's result -> its class
    result_of: Callable[[str, float], dict]     # a class and the proxy's confidence -> a result
    features: str = "text+embedding"            # duckllm.proxy.features.FEATURES: n-grams beside
                                                # the sentence embedder for a text (docs/proxy.md
                                                # measures the choice), 'pair' for llm_match's records
    seed: int = 0                               # which rows are sampled (duckllm.proxy.sampling)

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


def options(function: str, opts: dict) -> tuple[float, float] | None:
    """(agreement, its confidence) taken out of a call's options, or None without agreement.
    They are taken out because they do not change the model's answers: the task's cache key,
    and so its cached answers and stored examples, stay those of the call without them."""
    target = opts.pop("agreement", None)
    confidence = opts.pop("agreement_confidence", None)
    if target is None:
        if confidence is not None:
            raise ArgumentError(f"{function}: agreement_confidence goes with agreement; pass both, such as "
                                f"agreement := 0.95, agreement_confidence := 0.95")
        return None
    return (_rate(function, "agreement", target),
            DEFAULT_CONFIDENCE if confidence is None else _rate(function, "agreement_confidence", confidence))


def _rate(function: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= value < 1:
        raise ArgumentError(f"{function}: {name} must be a number from 0.5 to below 1, such as 0.95, got {value!r}")
    return float(value)
