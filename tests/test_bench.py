"""duckllm bench: the suite runner, its metrics and its report files, on the fake runtime."""
import json
from pathlib import Path

import pytest

from duckllm.errors import ArgumentError
from duckllm.evaluation import report, suite
from duckllm.evaluation.suite import Scored

SUITE = Path(__file__).parent / "fixtures" / "suite"


def test_calibration_metrics():
    perfect = [Scored(True, 0.95)] * 9 + [Scored(False, 0.95)]     # 90% right at 0.95: off by 0.05
    assert report.ece(perfect) == pytest.approx(0.05)
    ranked = [Scored(True, 0.9), Scored(True, 0.8), Scored(False, 0.2), Scored(True, 0.1), Scored(False, 0.05)]
    assert report.accuracy_at(ranked, 0.4) == 1.0 and report.accuracy_at(ranked, 1.0) == 0.6
    assert report.accuracy_at(ranked, 0.8) == 0.75


def test_every_task_kind_runs_and_is_scored(fake_engine):
    results = [r for name in suite.manifest(SUITE) for r in suite.run_dataset(fake_engine, SUITE, name, 10)]
    by_name = {r.dataset: r for r in results}
    assert {r.function for r in results} == {"llm_classify", "llm_match", "llm_extract", "llm_entities", "llm_clean"}
    # the fake picks the first label named in the text: 'refund the delivery fee' is refund, right
    assert by_name["tickets"].accuracy == 1.0 and by_name["tickets"].rows == 4
    assert by_name["products"].rows == 4 and len(by_name["products"].scored) == 4
    assert by_name["pairs"].f1 is not None and by_name["sentences"].f1 is not None
    assert all(0 <= r.accuracy <= 1 and r.invalid == 0 for r in results)


def test_the_report_files(fake_engine, tmp_path):
    results = suite.run_dataset(fake_engine, SUITE, "tickets", 10) + suite.run_dataset(fake_engine, SUITE, "cells", 10)
    written = report.write(tmp_path, "model fake", results)
    assert {p.name for p in written} == {"results.md", "results.json", "reliability.png",
                                         "accuracy_coverage.png", "per_dataset.png"}
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["dataset"] for r in rows] == ["tickets", "cells", "overall"]
    assert rows[-1]["rows"] == 6 and all(k in rows[0] for k in report.COLUMNS)
    assert "| tickets | llm_classify | duckllm | 4 | 1.000 |" in (tmp_path / "results.md").read_text()
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")


def test_unknown_datasets_and_tasks_are_clear_errors(fake_engine, tmp_path):
    with pytest.raises(ArgumentError, match="no dataset 'nope'.*it has tickets"):
        suite.run_dataset(fake_engine, SUITE, "nope", 5)
    (tmp_path / "datasets.json").write_text(json.dumps({"x": {"task": "translation", "file": "x.csv"}}))
    with pytest.raises(ArgumentError, match="task 'translation'; duckllm bench runs"):
        suite.run_dataset(fake_engine, tmp_path, "x", 5)


def test_a_parquet_table_works_as_a_dataset(fake_engine, tmp_path):
    import duckdb
    duckdb.connect().execute(f"COPY (SELECT * FROM read_csv('{SUITE / 'tickets.csv'}')) TO '{tmp_path / 't.parquet'}'")
    spec = json.loads((SUITE / "datasets.json").read_text())["tickets"]
    (tmp_path / "datasets.json").write_text(json.dumps({"mine": {**spec, "file": "t.parquet"}}))
    assert suite.run_dataset(fake_engine, tmp_path, "mine", 10)[0].accuracy == 1.0
