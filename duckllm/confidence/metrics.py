"""How far a confidence can be trusted, measured on answers known right or wrong.

AUROC: does it rank right answers above wrong ones. ECE (expected calibration error): does a
0.8 mean right 80% of the time, |accuracy - mean confidence| per equal-width bin, weighted by
the bin's rows. accuracy_at: the accuracy left after abstaining on the least confident rows.
A missing confidence counts as 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BINS = 10


def auroc(scores: Sequence[float], correct: Sequence[bool]) -> float | None:
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


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    rows: int
    confidence: float      # the rows' mean confidence
    accuracy: float        # the share of them answered right


def reliability(confidences: Sequence[float | None], correct: Sequence[bool], bins: int = BINS) -> list[Bin]:
    """The non-empty equal-width confidence bins, lowest first: the points of a reliability plot."""
    inside: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for c, ok in zip(confidences, correct):
        c = c or 0.0
        inside[min(int(c * bins), bins - 1)].append((c, ok))
    return [Bin(b / bins, (b + 1) / bins, len(rows), sum(c for c, _ in rows) / len(rows),
                sum(ok for _, ok in rows) / len(rows)) for b, rows in enumerate(inside) if rows]


def ece(confidences: Sequence[float | None], correct: Sequence[bool], bins: int = BINS) -> float | None:
    if not len(correct):
        return None
    return sum(b.rows * abs(b.accuracy - b.confidence) for b in reliability(confidences, correct, bins)) / len(correct)


def accuracy_at(confidences: Sequence[float | None], correct: Sequence[bool], coverage: float) -> float | None:
    """Accuracy on the most confident `coverage` share of rows (abstaining on the rest)."""
    if not len(correct):
        return None
    ranked = sorted(zip(confidences, correct), key=lambda pair: -(pair[0] or 0.0))
    kept = ranked[:max(1, round(coverage * len(ranked)))]
    return sum(ok for _, ok in kept) / len(kept)
