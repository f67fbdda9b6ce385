"""Confidence scores from token log-probabilities, side by side.

mean_token_prob is Refuel's: the mean probability of the answer's tokens over the whole
vocabulary (the end-of-turn token that closes the answer is left out). choice_prob is the
probability of the chosen option when decoding may only produce options. Which one llm_classify reports was decided by AUROC on public data (README).
"""
from __future__ import annotations

import math


def mean_token_prob(token_logprobs: list[float]) -> float | None:
    if not token_logprobs:
        return None
    return sum(math.exp(lp) for lp in token_logprobs) / len(token_logprobs)


def choice_prob(choice_logprob: float) -> float:
    return math.exp(choice_logprob)


def auroc(scores: list[float], correct: list[bool]) -> float | None:
    """Probability that a right answer scores above a wrong one (ties count half)."""
    ranked = sorted(zip(scores, correct))
    n_pos = sum(correct)
    n_neg = len(correct) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg_rank = (i + j + 1) / 2  # 1-based ranks i+1..j
        rank_sum += avg_rank * sum(1 for k in range(i, j) if ranked[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
