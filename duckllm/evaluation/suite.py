"""Quality of duckllm's functions on a labeled suite (datasets.py: the manifest and its files).

Each dataset runs through its task kind's function (kinds.py) on a fixed-seed sample of its ids,
and each answer is scored against the gold one. The baseline asks the same model in free text,
one chat completion per row, and parses the reply, as a tool without constrained decoding would
(askers.py). One runner serves every kind and either asker.
"""
from __future__ import annotations

import time
from pathlib import Path

from duckllm.errors import ArgumentError
from duckllm.evaluation.askers import Asker, DuckllmAsker, FreeText  # noqa: F401  (FreeText: the CLI's baseline)
from duckllm.evaluation.datasets import SEED, Dataset, default_suite, manifest, sample_ids  # noqa: F401
from duckllm.evaluation.kinds import KINDS, SLOTS, Kind  # noqa: F401
from duckllm.evaluation.scoring import Result, Scored, Tally  # noqa: F401  (Scored: the report's)


def run_dataset(engine, suite: Path, name: str, limit: int, baseline: Asker | None = None) -> list[Result]:
    """duckllm's result for one dataset, then the baseline's (a FreeText) when given."""
    dataset = Dataset.open(suite, name)
    if dataset.kind not in KINDS:
        raise ArgumentError(f"dataset {name!r} has task {dataset.kind!r}; duckllm bench runs {', '.join(sorted(KINDS))}")
    groups = sample_ids(dataset.rows(), limit)
    askers = [DuckllmAsker(engine)] + ([baseline] if baseline is not None else [])
    return [run_kind(KINDS[dataset.kind], dataset, groups, asker) for asker in askers]


def run_kind(kind: Kind, dataset: Dataset, groups: list[list[dict]], asker: Asker) -> Result:
    """The sampled ids' questions put to asker, each answer scored; timed whole."""
    start = time.perf_counter()
    units = kind.units(groups)
    result = Result(dataset.name, kind.function, asker.method, kind.rows(units), 0.0)
    tally = Tally()
    for call in kind.calls(dataset, units):
        for unit, answer in zip(call.units, call.ask(asker)):
            result.scored += kind.score(answer, kind.gold(unit), tally)
    if kind.f1:
        result.f1 = tally.f1
    result.seconds = time.perf_counter() - start
    return result
