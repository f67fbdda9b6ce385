"""Confidence scores from token log-probabilities, side by side.

mean_token_prob is Refuel's: the mean probability of the answer's tokens over the whole
vocabulary (the end-of-turn token that closes the answer is left out). choice_prob is the
probability of the chosen option when decoding may only produce options. Which one llm_classify reports was decided by AUROC on public data (README).
"""
from __future__ import annotations

import math

from duckllm.confidence.metrics import auroc  # noqa: F401  (declared there; imported from here too)


def mean_token_prob(token_logprobs: list[float]) -> float | None:
    if not token_logprobs:
        return None
    return sum(math.exp(lp) for lp in token_logprobs) / len(token_logprobs)


def choice_prob(choice_logprob: float) -> float:
    return math.exp(choice_logprob)
