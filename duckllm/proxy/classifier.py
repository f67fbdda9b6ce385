"""The proxy: a linear classifier on hashed n-grams, cross-fitted, with calibrated confidences.

The labeled rows (the model's own answers) are split into folds by a hash of their text. Each
fold gets a model trained on the other folds, and a new row is scored by the model of the fold
its own hash falls in: so a new row and a held-out row of its fold are scored alike, and what
the held-out rows show (how often the proxy agrees with the model above a score) carries over
to the new rows. It carries over from the drawn rows only (a random sample, as the new rows
are); the others (rows the proxy was unsure of) are trained on but do not speak for new rows.
Training is deterministic: rows in a fixed order, fixed seeds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import SGDClassifier

from duckllm.proxy import bound

FOLDS = 4
# Rows x labels one training may use: training costs about that, and a call with agreement
# trains again, so a long column's growing examples must not make each call slower without
# end. 500,000 is every stored row for 4 labels up to 125,000 rows, and 6,944 rows for the 72
# labels the default model gives on banking77: 10 s on two cores here with n-grams beside the
# embedder, against about 5 minutes of the model's time for a 2,048-row call.
TRAIN_CELLS = 500_000


def _estimator() -> SGDClassifier:
    # logistic loss gives probabilities; SGD fits 77 labels on thousands of rows in seconds,
    # where lbfgs took minutes on sparse n-grams, and ranks the rows as well (docs/proxy.md).
    # 8 passes rank as well as 15 did (banking77 and ag_news, docs/proxy.md) in half the time.
    # It fits one label against the rest at a time, each with its own seed drawn first, so
    # fitting them on all cores gives the same model as on one.
    return SGDClassifier(loss="log_loss", alpha=1e-4, max_iter=8, tol=None, random_state=0,
                         n_jobs=os.cpu_count())


class _Constant:
    """What a fold learns when its training rows all carry one label."""

    def __init__(self, label: str, classes: list[str]):
        self.column = classes.index(label)
        self.width = len(classes)

    def predict_proba(self, X) -> np.ndarray:
        p = np.zeros((X.shape[0], self.width))
        p[:, self.column] = 1.0
        return p


@dataclass
class Fitted:
    classes: list[str]
    models: list                       # one per fold
    calibration: IsotonicRegression | None
    threshold: float | None            # the lowest score the proxy answers at; None: none
    held_out: int                      # drawn labeled rows, scored by a model that did not see them
    agreement: float                   # how often the proxy agreed with the model above it, held out
    bound: float                       # the lower bound on that rate at the stated confidence
    share: float                       # the held-out rows above it
    held_out_scores: np.ndarray | None = None    # each labeled row's score from the model without it
    held_out_agreed: np.ndarray | None = None    # ... whether its label was the model's
    drawn: np.ndarray | None = None              # ... and whether it was drawn (speaks for new rows)

    def scores(self, X, folds: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Each row's label and score (its label's probability) from its fold's model."""
        labels = np.empty(X.shape[0], dtype=object)
        scores = np.zeros(X.shape[0])
        for k, model in enumerate(self.models):
            rows = np.flatnonzero(folds == k)
            if len(rows):
                p = _aligned(model, X[rows], self.classes)
                best = p.argmax(axis=1)
                labels[rows] = [self.classes[i] for i in best]
                scores[rows] = p[np.arange(len(rows)), best]
        return list(labels), scores

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probability that the proxy's label is the model's."""
        if self.calibration is None:
            return np.ones_like(scores)
        return self.calibration.predict(scores)


def _aligned(model, X, classes: list[str]) -> np.ndarray:
    """Probabilities over all classes, whichever of them the fold's model saw."""
    p = model.predict_proba(X)
    if isinstance(model, _Constant) or list(model.classes_) == classes:
        return p
    full = np.zeros((X.shape[0], len(classes)))
    full[:, [classes.index(c) for c in model.classes_]] = p
    return full


def fit(X, labels: list[str], folds: np.ndarray, drawn: np.ndarray, target: float, alpha: float,
        rank: np.ndarray | None = None, weights: np.ndarray | None = None) -> Fitted:
    """Cross-fit on the labeled rows (those of lowest rank when there are more than TRAIN_CELLS
    allows), each weighing `weights` in training (default 1), then calibrate and choose the
    threshold on the held-out scores of the drawn ones. A row no fold trained on is held out from
    all of them, and scored as any other."""
    classes = sorted(set(labels))
    y = np.asarray(labels, dtype=object)
    trainable = np.ones(len(y), dtype=bool)
    most = TRAIN_CELLS // len(classes)
    if rank is not None and len(y) > most:
        trainable = rank <= np.sort(rank)[most - 1]
    models = []
    for k in range(FOLDS):
        train = (folds != k) & trainable
        seen = sorted(set(y[train]))
        if len(seen) == 0:
            models.append(_Constant(classes[0], classes))
        elif len(seen) == 1:
            models.append(_Constant(seen[0], classes))
        else:
            models.append(_estimator().fit(X[train], y[train],
                                           sample_weight=None if weights is None else weights[train]))
    drawn = np.asarray(drawn, dtype=bool)
    fitted = Fitted(classes, models, None, None, int(drawn.sum()), 0.0, 0.0, 0.0)
    predicted, scores = fitted.scores(X, folds)
    agreed = np.asarray(predicted, dtype=object) == y
    fitted.held_out_scores, fitted.held_out_agreed, fitted.drawn = scores, agreed, drawn
    scores, agreed = scores[drawn], agreed[drawn]
    if len(set(scores)) > 1:
        fitted.calibration = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, agreed)
    fitted.threshold = bound.threshold(scores, agreed, target, alpha)
    if fitted.threshold is not None:
        above = scores >= fitted.threshold
        fitted.share = float(above.mean())
        fitted.agreement = float(agreed[above].mean())
        fitted.bound = bound.lower(int(agreed[above].sum()), int(above.sum()), alpha)
    return fitted
