"""How high the proxy's score must be for agreement >= target with a stated confidence.

The rows the model answered and the proxy did not train on (cross-fitting) give, for each
candidate threshold, how many of the rows above it the proxy got right. Clopper-Pearson's exact
lower bound on that rate must reach the target. The thresholds are tested in a fixed order,
from the most conservative down, stopping at the first that fails (fixed-sequence testing, as in
Learn-then-Test, Angelopoulos et al. 2021): each test runs at the full error rate and the whole
sequence still errs with probability at most alpha, so no multiplicity correction is needed.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta


def lower(agreed: int, n: int, alpha: float) -> float:
    """Clopper-Pearson one-sided lower bound at level 1 - alpha on a rate seen as agreed/n."""
    return 0.0 if agreed == 0 else float(beta.ppf(alpha, agreed, n - agreed + 1))


def upper(agreed: int, n: int, alpha: float) -> float:
    """Clopper-Pearson one-sided upper bound at level 1 - alpha."""
    return 1.0 if agreed == n else float(beta.ppf(1 - alpha, agreed + 1, n - agreed))


def fewest(target: float, alpha: float) -> int:
    """The fewest rows that can show agreement >= target at all: all of them agreeing."""
    return math.ceil(math.log(alpha) / math.log(target))


START = 4        # the first threshold tested keeps this many times fewest() rows above it ...
STEP = 1.03      # ... and each next one about 3% more: a finer sequence gives up less of the
                 # last step, and costs nothing in alpha (a fixed sequence needs no correction)


def candidates(n: int, target: float, alpha: float) -> list[int]:
    """How many of n score-ordered rows each tested threshold keeps, strictest first. A first
    test on barely enough rows would fail on one unlucky disagreement and end the sequence, so
    it starts where an agreement a little above the target can pass."""
    counts, k = [], START * fewest(target, alpha)
    while k < n:
        counts.append(k)
        k = max(k + 1, round(k * STEP))
    return counts + [n] if n >= fewest(target, alpha) else counts


def threshold(scores, agreed, target: float, alpha: float) -> float | None:
    """The lowest score threshold whose rows, and every stricter candidate's rows, show
    agreement >= target at level 1 - alpha; None when not even the strictest does.

    The candidates keep a growing number of the highest-scoring rows (candidates()): which ones
    are tried depends on the number of rows alone, never on which rows agreed, so the sequence is
    fixed before the outcomes are seen.
    """
    scores, agreed = np.asarray(scores, dtype=float), np.asarray(agreed, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, agreed = scores[order], agreed[order]
    chosen = None
    for k in candidates(len(scores), target, alpha):
        cut = scores[k - 1]
        n = int(np.searchsorted(-scores, -cut, side="right"))    # rows tied with the cut go in too
        if lower(int(agreed[:n].sum()), n, alpha) < target:
            break
        chosen = float(cut)
    return chosen
