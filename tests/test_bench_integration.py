"""duckllm bench end to end on the smallest real model, with the free-text baseline."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from duckllm.cli import main

from conftest import SMALL_MODEL

pytestmark = pytest.mark.integration
SUITE = Path(__file__).parent / "fixtures" / "suite"


def test_bench_writes_the_table_files_and_plots(small_model_path, tmp_path):
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["bench", "--suite", str(SUITE), "--datasets", "tickets,pairs,sentences",
                                       "--limit", "3", "--model", SMALL_MODEL, "--baseline", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| tickets | llm_classify | duckllm | 3 |" in result.output
    assert "| sentences | llm_entities | free text | 2 |" in result.output     # the suite has 2 sentences
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["dataset"], r["method"]) for r in rows][-2:] == [("overall", "duckllm"), ("overall", "free text")]
    duckllm_rows = [r for r in rows if r["method"] == "duckllm"]
    assert all(r["invalid"] == 0 for r in duckllm_rows)           # constrained answers always parse
    assert {p.name for p in out.iterdir()} >= {"results.md", "reliability.png", "accuracy_coverage.png",
                                               "per_dataset.png"}


def test_bench_without_a_suite_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("duckllm.suite.default_suite", lambda: None)
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code != 0 and "pass --suite DIR" in result.output
