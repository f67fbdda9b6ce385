"""What `duckllm bench` reports: per dataset and overall, how right the answers are, whether the
confidence can be trusted, and how fast; written as a table, results.md, results.json and plots.

Confidence is judged three ways: AUROC (does it rank right answers above wrong ones), ECE (does
a 0.8 mean right 80% of the time) and the accuracy left after abstaining on the least confident
20% of rows; and again after calibration (the `_cal` columns), each row's confidence from a map
fitted on the dataset's other rows (cross-fitted, as llm_calibrate would fit it), with the cut
that reaches a precision of 0.9 and the share of rows it keeps.
"""
from __future__ import annotations

import json
from pathlib import Path

from duckllm.confidence import calibration, metrics
from duckllm.confidence.metrics import BINS, auroc
from duckllm.evaluation.scoring import Result, Scored

ABSTAIN = 0.2
COLUMNS = ("dataset", "function", "method", "rows", "accuracy", "f1", "invalid", "auroc", "ece",
           "acc_at_80", "auroc_cal", "ece_cal", "acc_at_80_cal", "cut_p90", "coverage_p90", "rows_per_s")
PRECISION = 0.9


def ece(scored: list[Scored], bins: int = BINS) -> float | None:
    return metrics.ece([s.confidence for s in scored], [s.correct for s in scored], bins)


def accuracy_at(scored: list[Scored], coverage: float) -> float | None:
    return metrics.accuracy_at([s.confidence for s in scored], [s.correct for s in scored], coverage)


def row(result: Result) -> dict:
    return {**result.row(), "ece": ece(result.scored), "acc_at_80": accuracy_at(result.scored, 1 - ABSTAIN),
            **_calibrated_columns(calibrated(result), [s.correct for s in result.scored])}


def calibrated(result: Result) -> list[float] | None:
    """Each answer's confidence after a calibration fitted on the dataset's other rows, or None
    where the rows cannot calibrate (too few, or all right or all wrong)."""
    scored = result.scored
    answers = [s.answer for s in scored] if scored and all(s.answer is not None for s in scored) else None
    mapped = calibration.cross_fit([s.confidence for s in scored], [s.correct for s in scored], answers)
    return None if mapped is None else [float(p) for p in mapped]


def _calibrated_columns(confidences: list[float] | None, correct: list[bool]) -> dict:
    if confidences is None:
        return dict.fromkeys(("auroc_cal", "ece_cal", "acc_at_80_cal", "cut_p90", "coverage_p90"))
    cut = calibration.for_precision(confidences, correct, PRECISION)
    return {"auroc_cal": auroc(confidences, correct), "ece_cal": metrics.ece(confidences, correct),
            "acc_at_80_cal": metrics.accuracy_at(confidences, correct, 1 - ABSTAIN),
            "cut_p90": cut.cut, "coverage_p90": cut.coverage}


def overall(results: list[Result]) -> list[dict]:
    """One line per method over every scored answer of every dataset (F1: the datasets' mean)."""
    lines = []
    for method in dict.fromkeys(r.method for r in results):
        mine = [r for r in results if r.method == method]
        scored = [s for r in mine for s in r.scored]
        f1s = [r.f1 for r in mine if r.f1 is not None]
        seconds = sum(r.seconds for r in mine)
        mapped = [(calibrated(r), r) for r in mine]
        pooled = [c for m, r in mapped if m is not None for c in m]
        pooled_correct = [s.correct for m, r in mapped if m is not None for s in r.scored]
        lines.append({
            **_calibrated_columns(pooled or None, pooled_correct),
            "dataset": "overall", "function": "-", "method": method, "rows": sum(r.rows for r in mine),
            "accuracy": sum(s.correct for s in scored) / max(1, len(scored)),
            "f1": sum(f1s) / len(f1s) if f1s else None, "invalid": sum(r.invalid for r in mine),
            "auroc": auroc([s.confidence or 0.0 for s in scored], [s.correct for s in scored]),
            "ece": ece(scored), "acc_at_80": accuracy_at(scored, 1 - ABSTAIN),
            "rows_per_s": sum(r.rows for r in mine) / seconds if seconds else None})
    return lines


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write(out: Path, header: str, results: list[Result]) -> list[Path]:
    """results.md, results.json and the plots (when matplotlib is installed); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [row(r) for r in results] + overall(results)
    (out / "results.md").write_text(f"{header}\n\n{markdown(rows)}\n")
    (out / "results.json").write_text(json.dumps({"about": header, "rows": rows}, indent=1))
    return [out / "results.md", out / "results.json"] + plots(out, results)


def plots(out: Path, results: list[Result]) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    methods = list(dict.fromkeys(r.method for r in results))
    written = []

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for method in methods:
        scored = [s for r in results if r.method == method for s in r.scored]
        points = metrics.reliability([s.confidence for s in scored], [s.correct for s in scored])
        ax.plot([b.confidence for b in points], [b.accuracy for b in points], "o-", label=method)
        mapped = [(calibrated(r), r) for r in results if r.method == method]
        points = metrics.reliability([c for m, _ in mapped if m for c in m],
                                     [s.correct for m, r in mapped if m for s in r.scored])
        if points:
            ax.plot([b.confidence for b in points], [b.accuracy for b in points], "s--",
                    label=f"{method}, calibrated (cross-fitted)")
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability (all datasets)", xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    written.append(_save(fig, out / "reliability.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    coverages = [c / 20 for c in range(1, 21)]
    for r in results:
        if r.method == methods[0] and r.scored:
            ax.plot(coverages, [accuracy_at(r.scored, c) for c in coverages], label=r.dataset)
    ax.set(xlabel="coverage (share of rows answered, most confident first)", ylabel="accuracy",
           title=f"Accuracy vs coverage ({methods[0]})", ylim=(0, 1.02))
    ax.legend(fontsize="small")
    written.append(_save(fig, out / "accuracy_coverage.png"))

    datasets = list(dict.fromkeys(r.dataset for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        by_dataset = {r.dataset: r for r in results if r.method == method}
        xs = [d + i * width for d in range(len(datasets))]
        axes[0].bar(xs, [by_dataset[d].accuracy if d in by_dataset else 0 for d in datasets], width, label=method)
        axes[1].bar(xs, [(by_dataset[d].auroc or 0) if d in by_dataset else 0 for d in datasets], width, label=method)
    for ax, title in zip(axes, ("accuracy", "confidence AUROC")):
        ax.set_xticks([d + width * (len(methods) - 1) / 2 for d in range(len(datasets))], datasets,
                      rotation=45, ha="right")
        ax.set(title=f"{title} per dataset", ylim=(0, 1))
        ax.legend(fontsize="small")
    written.append(_save(fig, out / "per_dataset.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path
