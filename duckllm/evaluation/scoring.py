"""An answer against its gold one: right or wrong, with the confidence it came with, gathered into
one Result per dataset and method; and the text comparisons the scores rest on."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from duckllm.confidence import auroc

MISSING = "n/a"     # the suite's gold value for an attribute the text does not give


@dataclass
class Scored:
    """One answer: right or wrong, with the confidence duckllm gave it; invalid = unparseable."""
    correct: bool
    confidence: float | None
    invalid: bool = False
    answer: str | None = None    # what the confidence is about (a label, a match, a field), for
                                 # calibration with an offset for each (llm_calibrate's by_answer)


@dataclass
class Result:
    dataset: str
    function: str
    method: str
    rows: int
    seconds: float
    scored: list[Scored] = field(default_factory=list)
    f1: float | None = None      # where the task calls for it (matching, entities, slots)

    @property
    def accuracy(self) -> float:
        return sum(s.correct for s in self.scored) / max(1, len(self.scored))

    @property
    def invalid(self) -> int:
        return sum(s.invalid for s in self.scored)

    @property
    def auroc(self) -> float | None:
        return auroc([s.confidence or 0.0 for s in self.scored], [s.correct for s in self.scored])

    def row(self) -> dict:
        return {"dataset": self.dataset, "function": self.function, "method": self.method,
                "rows": self.rows, "accuracy": self.accuracy, "f1": self.f1, "invalid": self.invalid,
                "auroc": self.auroc, "rows_per_s": self.rows / self.seconds if self.seconds else None}


@dataclass
class Tally:
    """True and false positives and negatives, for F1 over a dataset's yes/no decisions."""
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, predicted: set | bool, truth: set | bool) -> None:
        """Sets of found and true items, or one decision and its truth."""
        if isinstance(predicted, set):
            self.tp, self.fp, self.fn = (self.tp + len(predicted & truth), self.fp + len(predicted - truth),
                                         self.fn + len(truth - predicted))
        else:
            self.tp += bool(predicted and truth)
            self.fp += bool(predicted and not truth)
            self.fn += bool(truth and not predicted)

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0


def norm(s) -> str:
    """Lower case, every run of other characters than letters and digits one space."""
    return re.sub(r"[^a-z0-9]+", " ", str(s or "").lower()).strip()


def gold_values(row: dict) -> list[str]:
    values = json.loads(row.get("all_values") or "[]") or [row["value"]]
    return [norm(v) for v in values]


def value_right(predicted, row: dict) -> bool:
    """An extracted value against the row's gold values; no value is right where the gold is n/a."""
    gold = gold_values(row)
    if predicted is None or norm(predicted) in ("", "n a", "null", "none"):
        return norm(MISSING) in gold
    return norm(predicted) in gold
