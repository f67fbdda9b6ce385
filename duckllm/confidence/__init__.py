"""Confidence scores from token log-probabilities, side by side.

sequence_prob is the probability of the answer's tokens together (their product) over the whole
vocabulary: the model's probability of writing exactly this label here. mean_token_prob is
Refuel's: the mean of those tokens' probabilities. Both leave out the end-of-turn token that
closes the answer. choice_prob is the probability of the chosen option when decoding may only
produce options. llm_classify reports sequence_prob by default: on the default model it ranks
answers best over the public suite pooled and is the least over-confident (docs/calibration.md).
"""
from __future__ import annotations

import math

from duckllm.confidence.metrics import auroc  # noqa: F401  (declared there; imported from here too)


def mean_token_prob(token_logprobs: list[float]) -> float | None:
    if not token_logprobs:
        return None
    return sum(math.exp(lp) for lp in token_logprobs) / len(token_logprobs)


def sequence_prob(token_logprobs: list[float]) -> float | None:
    if not token_logprobs:
        return None
    return math.exp(sum(token_logprobs))


def choice_prob(choice_logprob: float) -> float:
    return math.exp(choice_logprob)
