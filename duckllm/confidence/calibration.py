"""Calibration maps fitted on a few labeled rows: a confidence of 0.8 is then right 8 times in 10.

A map takes a raw confidence (or several raw signals) to the probability that the answer is
right. Four kinds, fitted on (confidence, right or wrong) pairs:
  temperature  sigmoid(logit(p) / T): one number, keeps the ranking, only tempers the scale
  platt        sigmoid(w . logit(p) + b): logistic regression on the logits of one or more signals
  by_answer    platt with an offset of its own for each answer (label), shrunk toward none: a
               model that over-calls one label is right less often when it answers that label
  isotonic     the monotone step function closest to the answers (pool-adjacent-violators)
  histogram    equal-count bins of the confidence, each mapped to its share of right answers
`choose` fits each on all but one fold and scores it on that fold (cross-fitting), and keeps
the one whose held-out Brier score is lowest; its report gives ECE, AUROC and Brier before and
after on the held-out folds. Brier, not ECE, decides: ECE alone rewards a map that says the
base rate to every row (ECE near 0, AUROC 0.5); on sms_spam it picked temperature (held-out
AUROC 0.55) over offsets by answer (0.95), whose Brier score was a quarter of it
(bench/calibration.py). A map is data (to_json / from_json), so it can be stored and applied
later. Pure: knows nothing of models, tasks or storage.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from duckllm.confidence.metrics import auroc, ece
from duckllm.errors import ArgumentError

METHODS = ("temperature", "platt", "isotonic", "histogram")
BY_ANSWER = "by_answer"                  # a candidate too when the answers are given
SIMPLEST_FIRST = ("none", *METHODS, BY_ANSWER)   # a tie in held-out score goes to the simpler map
MIN_ROWS = 30          # fewer labeled rows than this cannot tell a map from noise
MIN_EACH = 5           # and at least this many right and this many wrong answers among them
FOLDS = 5
EPS = 1e-6
RIDGE = 1e-3           # a whisker of L2 on Platt's weights: separable rows keep finite weights
OFFSET_RIDGE = 0.5     # L2 on each answer's offset: an answer seen in a row or two moves it little


class CalibrationError(ArgumentError):
    """Labeled rows that cannot calibrate a confidence: the message says what to add."""


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(z, -500, 500)))


def answer_key(answer) -> str:
    """An answer as offsets by answer key it: a label as itself, a match as 'true'/'false'."""
    return str(answer).lower() if isinstance(answer, bool) else str(answer)


def _features(signals) -> np.ndarray:
    """Rows x signals: a flat sequence is one signal; a missing confidence counts as 0."""
    x = np.asarray([[0.0 if v is None else v for v in (s if isinstance(s, (list, tuple)) else [s])]
                    for s in signals], dtype=float)
    return x.reshape(len(signals), -1) if len(x) else np.zeros((0, 1))


@dataclass(frozen=True)
class Map:
    """A fitted calibration map; params are plain numbers and lists (JSON)."""
    method: str
    params: dict

    def __call__(self, signals, answers: Sequence | None = None) -> np.ndarray:
        """Calibrated probabilities for rows of signals (a flat list: one signal per row), and
        each row's answer where the map has offsets by answer."""
        x = _features(signals)
        p = self.params
        if self.method == "none":
            return np.clip(x[:, 0], 0.0, 1.0)
        if self.method == "temperature":
            return _sigmoid(_logit(x[:, 0]) / p["temperature"])
        if self.method in ("platt", BY_ANSWER):
            offsets = p.get("offsets") or {}
            shift = np.asarray([offsets.get(str(a), 0.0) for a in answers] if answers is not None and offsets
                               else np.zeros(len(x)))
            return _sigmoid(_logit(x) @ np.asarray(p["weights"]) + p["bias"] + shift)
        if self.method == "isotonic":
            return np.interp(x[:, 0], p["x"], p["y"])
        if self.method == "histogram":
            return np.asarray(p["values"])[np.searchsorted(p["edges"], x[:, 0], side="right")]
        raise CalibrationError(f"unknown calibration method {self.method!r}; use one of {', '.join(METHODS)}")

    def one(self, confidence: float | None, answer=None) -> float | None:
        return None if confidence is None else float(self([confidence], [answer])[0])

    def to_json(self) -> dict:
        return {"method": self.method, "params": self.params}

    @staticmethod
    def from_json(data: dict) -> Map:
        return Map(data["method"], data["params"])


# ---- fitting ---------------------------------------------------------------------------------

def check(correct: Sequence[bool], what: str = "rows") -> None:
    """Raise a CalibrationError that says what to add when these answers cannot calibrate."""
    n, right = len(correct), int(sum(correct))
    if n < MIN_ROWS:
        raise CalibrationError(f"calibration needs at least {MIN_ROWS} labeled {what}, got {n}; label more "
                               f"rows (50 to 200 is typical)")
    if min(right, n - right) < MIN_EACH:
        kind = "right" if right < MIN_EACH else "wrong"
        raise CalibrationError(
            f"calibration needs at least {MIN_EACH} answers the model gets {kind}, and of these {n} labeled "
            f"{what} it got {min(right, n - right)} {kind}: a confidence cannot be calibrated against one "
            f"outcome only; add labeled rows it gets {kind} (harder or more varied ones)")


def fit(method: str, signals, correct: Sequence[bool], answers: Sequence | None = None) -> Map:
    x, y = _features(signals), np.asarray(correct, dtype=float)
    if method == "none":
        return Map("none", {})
    if method == "temperature":
        return Map(method, {"temperature": _temperature(_logit(x[:, 0]), y)})
    if method == "platt":
        weights, bias, _ = _logistic(_logit(x), y)
        return Map(method, {"weights": weights, "bias": bias})
    if method == BY_ANSWER:
        if answers is None:
            raise CalibrationError(f"{BY_ANSWER} calibration needs each row's answer")
        weights, bias, offsets = _logistic(_logit(x), y, [str(a) for a in answers])
        return Map(method, {"weights": weights, "bias": bias, "offsets": offsets})
    if method == "isotonic":
        return Map(method, _isotonic(x[:, 0], y))
    if method == "histogram":
        return Map(method, _histogram(x[:, 0], y))
    raise CalibrationError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}, "
                           f"{BY_ANSWER} or 'auto'")


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _temperature(z: np.ndarray, y: np.ndarray) -> float:
    """The T minimising log loss, by golden-section search over log T in [1/100, 100]."""
    lo, hi = math.log(0.01), math.log(100.0)
    golden = (math.sqrt(5) - 1) / 2
    loss = lambda t: _nll(_sigmoid(z / math.exp(t)), y)
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    for _ in range(80):
        if loss(a) < loss(b):
            hi, b = b, a
            a = hi - golden * (hi - lo)
        else:
            lo, a = a, b
            b = lo + golden * (hi - lo)
    return math.exp((lo + hi) / 2)


def _logistic(z: np.ndarray, y: np.ndarray, answers: list[str] | None = None
              ) -> tuple[list[float], float, dict[str, float]]:
    """Logistic regression by Newton's method: weights on the signals' logits (a whisker of L2),
    a bias (none), and with answers an offset for each answer (OFFSET_RIDGE)."""
    kinds = sorted(set(answers)) if answers else []
    one_hot = np.asarray([[a == k for k in kinds] for a in answers or [()] * len(y)],
                         dtype=float).reshape(len(y), len(kinds))
    x = np.hstack([z, one_hot, np.ones((len(z), 1))])
    beta = np.zeros(x.shape[1])
    penalty = np.diag([RIDGE * len(y)] * z.shape[1] + [OFFSET_RIDGE] * len(kinds) + [0.0])
    for _ in range(100):
        p = _sigmoid(x @ beta)
        gradient = x.T @ (p - y) + penalty @ beta
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    n = z.shape[1]
    return ([float(w) for w in beta[:n]], float(beta[-1]),
            {k: float(o) for k, o in zip(kinds, beta[n:n + len(kinds)])})


def _smoothed(right: float, rows: float) -> float:
    """A bin's share of right answers, pulled a little toward 1/2 (a bin of 3 right of 3 is not
    certain)."""
    return (right + 0.5) / (rows + 1)


def _isotonic(x: np.ndarray, y: np.ndarray) -> dict:
    """Pool adjacent violators: blocks of rows in confidence order, merged until their shares of
    right answers rise; the map interpolates between the blocks' mean confidences."""
    order = np.argsort(x, kind="stable")
    blocks: list[list[float]] = []        # [sum of x, right answers, rows]
    for xi, yi in zip(x[order], y[order]):
        blocks.append([xi, yi, 1.0])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            sx, sy, n = blocks.pop()
            blocks[-1] = [blocks[-1][0] + sx, blocks[-1][1] + sy, blocks[-1][2] + n]
    return {"x": [b[0] / b[2] for b in blocks], "y": [_smoothed(b[1], b[2]) for b in blocks]}


def _histogram(x: np.ndarray, y: np.ndarray) -> dict:
    """Equal-count bins (about 20 rows each, 2 to 10 bins); edges halfway between neighbours."""
    n_bins = max(2, min(10, len(x) // 20))
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    cuts = [round(len(xs) * k / n_bins) for k in range(n_bins + 1)]
    edges, values = [], []
    for k in range(n_bins):
        lo, hi = cuts[k], cuts[k + 1]
        values.append(_smoothed(float(ys[lo:hi].sum()), hi - lo))
        if k:
            edges.append(float((xs[lo - 1] + xs[lo]) / 2))
    return {"edges": edges, "values": values}


# ---- choosing by held-out ECE ----------------------------------------------------------------

@dataclass(frozen=True)
class Scores:
    """How a map does on the held-out folds; before: the raw confidence on the same rows."""
    method: str
    ece_before: float
    ece_after: float
    auroc_before: float | None
    auroc_after: float | None
    brier_before: float
    brier_after: float


def brier(confidences, correct) -> float:
    """Mean squared distance of the confidence from the outcome (1 right, 0 wrong)."""
    p, y = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    return float(np.mean((p - y) ** 2))


@dataclass(frozen=True)
class Report:
    rows: int
    accuracy: float
    chosen: str
    candidates: tuple[Scores, ...]

    def to_json(self) -> dict:
        return asdict(self)


def folds_of(n: int, k: int = FOLDS, seed: int = 0) -> list[int]:
    """Each row's fold: a fixed shuffle dealt round-robin, so folds differ in size by one at most."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    fold = [0] * n
    for position, i in enumerate(order):
        fold[i] = position % k
    return fold


def held_out(method: str, signals, correct: Sequence[bool], k: int = FOLDS, seed: int = 0,
             answers: Sequence | None = None) -> np.ndarray:
    """Each row's calibrated confidence from a map fitted on the other folds."""
    fold = np.asarray(folds_of(len(correct), k, seed))
    x, y = _features(signals), np.asarray(correct, dtype=bool)
    a = None if answers is None else np.asarray([str(v) for v in answers], dtype=object)
    out = np.zeros(len(y))
    for f in range(k):
        test = fold == f
        if test.any():
            m = fit(method, x[~test], y[~test], None if a is None else a[~test])
            out[test] = m(x[test], None if a is None else a[test])
    return out


def choose(signals, correct: Sequence[bool], methods: Sequence[str] | None = None, k: int = FOLDS,
           seed: int = 0, what: str = "rows", answers: Sequence | None = None,
           criterion: str = "brier") -> tuple[Map, Report]:
    """The map of the lowest held-out Brier score (criterion 'ece': ECE; a tie: the simpler),
    fitted again on every row. With each row's answer, offsets by answer are a candidate too."""
    check(correct, what)
    if methods is None:
        methods = METHODS + ((BY_ANSWER,) if answers is not None else ())
    x, y = _features(signals), [bool(c) for c in correct]
    raw = x[:, 0]
    before = (ece(raw, y), auroc(raw, y), brier(raw, y))
    scores = []
    for method in methods:
        p = held_out(method, x, y, k, seed, answers)
        scores.append(Scores(method, before[0], ece(p, y), before[1], auroc(p, y), before[2], brier(p, y)))
    rank = {m: i for i, m in enumerate(SIMPLEST_FIRST)}
    score = (lambda s: s.ece_after) if criterion == "ece" else (lambda s: s.brier_after)
    best = min(scores, key=lambda s: (round(score(s), 3), rank.get(s.method, len(rank))))
    return fit(best.method, x, y, answers), Report(len(y), sum(y) / len(y), best.method, tuple(scores))


def cross_fit(signals, correct: Sequence[bool], answers: Sequence | None = None, k: int = FOLDS,
              seed: int = 0) -> np.ndarray | None:
    """Each row's confidence from the map `choose` picks on the other folds: calibration judged
    on rows it was not fitted on. None when the rows cannot calibrate (too few, one outcome)."""
    fold = np.asarray(folds_of(len(correct), k, seed))
    x, y = _features(signals), np.asarray(correct, dtype=bool)
    a = None if answers is None else np.asarray([str(v) for v in answers], dtype=object)
    out = np.zeros(len(y))
    try:
        check(correct)
        for f in range(k):
            test = fold == f
            if test.any():
                chosen, _ = choose(x[~test], y[~test], k=k, seed=seed, answers=None if a is None else a[~test])
                out[test] = chosen(x[test], None if a is None else a[test])
    except CalibrationError:
        return None
    return out


# ---- thresholds from a target ----------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    """Answer rows whose confidence is at least `cut`, abstain on the rest: on the labeled rows
    that keeps `coverage` of them at `accuracy` (the precision of the answers given)."""
    target: str
    cut: float
    accuracy: float | None
    coverage: float


def _kept(confidences, correct, cut: float) -> tuple[float | None, float]:
    kept = [ok for c, ok in zip(confidences, correct) if (c or 0.0) >= cut]
    return (sum(kept) / len(kept) if kept else None), len(kept) / max(1, len(correct))


def for_precision(confidences, correct: Sequence[bool], target: float) -> Threshold:
    """The lowest cut whose kept rows are right at least `target` of the time (most coverage);
    none reaches it: the cut above every row (abstain on all)."""
    if not 0 < target <= 1:
        raise CalibrationError(f"a target precision is a share from 0 to 1 such as 0.9, got {target!r}")
    ranked = sorted(zip([c or 0.0 for c in confidences], correct), key=lambda pair: -pair[0])
    best, right = None, 0
    for i, (c, ok) in enumerate(ranked):
        right += ok
        last_of_tie = i + 1 == len(ranked) or ranked[i + 1][0] < c
        if last_of_tie and right / (i + 1) >= target:
            best = c
    cut = best if best is not None else math.nextafter(max((c for c, _ in ranked), default=1.0), math.inf)
    return Threshold(f"precision {target:g}", cut, *_kept(confidences, correct, cut))


def for_coverage(confidences, correct: Sequence[bool], target: float) -> Threshold:
    """The cut that answers the most confident `target` share of rows (ties may keep a few more)."""
    if not 0 < target <= 1:
        raise CalibrationError(f"a target coverage is a share from 0 to 1 such as 0.8, got {target!r}")
    ranked = sorted((c or 0.0 for c in confidences), reverse=True)
    cut = ranked[max(1, round(target * len(ranked))) - 1] if ranked else 0.0
    return Threshold(f"coverage {target:g}", cut, *_kept(confidences, correct, cut))
