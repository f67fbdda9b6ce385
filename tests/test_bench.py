"""duckllm bench: the suite runner, its metrics and its report files, on the fake runtime."""
import json
from pathlib import Path

import pytest

from duckllm.errors import ArgumentError
from duckllm.evaluation import report, suite
from duckllm.evaluation.askers import Answer, Entity, FreeText
from duckllm.evaluation.suite import Scored

SUITE = Path(__file__).parent / "fixtures" / "suite"


def test_calibration_metrics():
    perfect = [Scored(True, 0.95)] * 9 + [Scored(False, 0.95)]     # 90% right at 0.95: off by 0.05
    assert report.ece(perfect) == pytest.approx(0.05)
    ranked = [Scored(True, 0.9), Scored(True, 0.8), Scored(False, 0.2), Scored(True, 0.1), Scored(False, 0.05)]
    assert report.accuracy_at(ranked, 0.4) == 1.0 and report.accuracy_at(ranked, 1.0) == 0.6
    assert report.accuracy_at(ranked, 0.8) == 0.75


def test_every_task_kind_runs_and_is_scored(fake_engine):
    engine = fake_engine
    results = [r for name in suite.manifest(SUITE) for r in suite.run_dataset(engine, SUITE, name, 10)]
    by_name = {r.dataset: r for r in results}
    assert {r.function for r in results} == {"llm_classify", "llm_match", "llm_extract", "llm_entities", "llm_clean"}
    # the fake picks the first label named in the text: 'refund the delivery fee' is refund, right
    assert by_name["tickets"].accuracy == 1.0 and by_name["tickets"].rows == 4
    assert by_name["products"].rows == 4 and len(by_name["products"].scored) == 4
    assert by_name["pairs"].f1 is not None and by_name["sentences"].f1 is not None
    assert all(0 <= r.accuracy <= 1 and r.invalid == 0 for r in results)


def test_the_report_files(fake_engine, tmp_path):
    engine = fake_engine
    results = suite.run_dataset(engine, SUITE, "tickets", 10) + suite.run_dataset(engine, SUITE, "cells", 10)
    written = report.write(tmp_path, "model fake", results)
    assert {p.name for p in written} == {"results.md", "results.json", "reliability.png",
                                         "accuracy_coverage.png", "per_dataset.png"}
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["dataset"] for r in rows] == ["tickets", "cells", "overall"]
    assert rows[-1]["rows"] == 6 and all(k in rows[0] for k in report.COLUMNS)
    assert "| tickets | llm_classify | duckllm | 4 | 1.000 |" in (tmp_path / "results.md").read_text()
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")


def test_unknown_datasets_and_tasks_are_clear_errors(fake_engine, tmp_path):
    engine = fake_engine
    with pytest.raises(ArgumentError, match="no dataset 'nope'.*it has tickets"):
        suite.run_dataset(engine, SUITE, "nope", 5)
    (tmp_path / "datasets.json").write_text(json.dumps({"x": {"task": "translation", "file": "x.csv"}}))
    with pytest.raises(ArgumentError, match="task 'translation'; duckllm bench runs"):
        suite.run_dataset(engine, tmp_path, "x", 5)


def test_a_parquet_table_works_as_a_dataset(fake_engine, tmp_path):
    import duckdb
    duckdb.connect().execute(f"COPY (SELECT * FROM read_csv('{SUITE / 'tickets.csv'}')) TO '{tmp_path / 't.parquet'}'")
    spec = json.loads((SUITE / "datasets.json").read_text())["tickets"]
    (tmp_path / "datasets.json").write_text(json.dumps({"mine": {**spec, "file": "t.parquet"}}))
    engine = fake_engine
    assert suite.run_dataset(engine, tmp_path, "mine", 10)[0].accuracy == 1.0


# ---- the task kinds, scored the same for any asker ----------------------------------------------

class Oracle:
    """An asker that reads the gold answer from each question, so every answer is right; or, with
    wrong=True, every answer wrong, with a reply it cannot read where the kind has one."""
    method = "oracle"

    def __init__(self, gold, wrong=False):
        self.gold, self.wrong = gold, wrong

    def classify(self, texts, labels, descriptions):
        return [Answer(None, 0.1, True) if self.wrong else Answer(self.gold[t], 0.9) for t in texts]

    def match(self, pairs):
        return [Answer(self.gold[p] != self.wrong, 0.8, self.wrong) for p in pairs]

    def extract(self, texts, attributes):
        return [{a: Answer("wrong" if self.wrong else self.gold[t, a], 0.7) for a in attributes} for t in texts]

    def enrich(self, texts, question):
        return [Answer("wrong" if self.wrong else self.gold[t, question], 0.6) for t in texts]

    def entities(self, texts, types):
        return [[Entity(kind, "nobody" if self.wrong else name, 0.5) for kind, name in self.gold[t]] for t in texts]

    def slots(self, texts, slots):
        return [{s: Answer((s in self.gold[t]) != self.wrong, 0.9) for s in slots} for t in texts]

    def clean(self, texts):
        return [Answer("wrong" if self.wrong else f" {self.gold[t]} ", 0.8) for t in texts]


def _gold(name, groups):
    """Each question's gold answer, keyed as Oracle asks for it."""
    if name == "tickets":
        return {r["text"]: r["label"] for g in groups for r in g}
    if name == "pairs":
        return {(r["left"], r["right"]): r["label"] == "match" for g in groups for r in g}
    if name == "products":
        return {(r["text"], r["attribute"]): r["value"] for g in groups for r in g}
    if name == "wdc_pave":
        return {(r["text"], f"What is the {r['attribute']} of this product? Answer n/a if the text does not say."):
                r["value"] for g in groups for r in g}
    if name == "sentences":
        return {g[0]["text"]: [(r["attribute"], e) for r in g for e in json.loads(r["value"])] for g in groups}
    if name == "restaurant8k":
        return {g[0]["text"]: {r["attribute"] for r in g if r["value"] != "n/a"} for g in groups}
    return {r["dirty"]: r["clean"] for g in groups for r in g}


@pytest.fixture
def every_kind(tmp_path):
    """The fixture suite and two more datasets, named as the public ones asked another way:
    wdc_pave (a question per attribute) and restaurant8k (which slots an utterance fills)."""
    for f in SUITE.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    specs = json.loads((SUITE / "datasets.json").read_text())
    specs["wdc_pave"] = {**specs["products"], "file": "products.csv"}
    (tmp_path / "utterances.csv").write_text(
        "id,text,attribute,value\n"
        "u1,a table for 4 on friday,people,4\nu1,a table for 4 on friday,date,friday\n"
        "u1,a table for 4 on friday,time,n/a\nu1,a table for 4 on friday,first_name,n/a\n"
        "u1,a table for 4 on friday,last_name,n/a\n")
    specs["restaurant8k"] = {"task": "extraction", "file": "utterances.csv"}
    (tmp_path / "datasets.json").write_text(json.dumps(specs))
    return tmp_path


@pytest.mark.parametrize("name, function, rows, scored, f1", [
    ("tickets", "llm_classify", 4, 4, None),
    ("pairs", "llm_match", 3, 3, 1.0),
    ("products", "llm_extract", 4, 4, None),
    ("wdc_pave", "llm_enrich", 4, 4, None),
    ("sentences", "llm_entities", 2, 4, 1.0),
    ("restaurant8k", "llm_classify_multi", 1, 5, 1.0),
    ("cells", "llm_clean", 2, 2, None),
])
def test_each_kind_scores_right_answers_right_and_wrong_ones_wrong(every_kind, name, function, rows, scored, f1):
    dataset = suite.Dataset.open(every_kind, name)
    groups = suite.sample_ids(dataset.rows(), 10)
    kind = suite.KINDS[dataset.kind]
    right = suite.run_kind(kind, dataset, groups, Oracle(_gold(name, groups)))
    assert (right.function, right.method, right.rows, len(right.scored)) == (function, "oracle", rows, scored)
    assert right.accuracy == 1.0 and right.invalid == 0 and right.f1 == f1
    wrong = suite.run_kind(kind, dataset, groups, Oracle(_gold(name, groups), wrong=True))
    assert wrong.accuracy < 1.0 and (f1 is None or wrong.f1 < 1.0)
    assert wrong.invalid == {"tickets": 4, "pairs": 3}.get(name, 0)


def test_duckllm_asks_every_kind_through_its_function(fake_engine, every_kind):
    results = [r for name in ("wdc_pave", "restaurant8k") for r in suite.run_dataset(fake_engine, every_kind, name, 10)]
    assert [(r.dataset, r.function, r.rows, len(r.scored)) for r in results] == [
        ("wdc_pave", "llm_enrich", 4, 4), ("restaurant8k", "llm_classify_multi", 1, 5)]
    # the fake names 'people' (the first option the text holds) and not the others
    assert results[1].f1 is not None and all(s.confidence for s in results[1].scored)


def test_free_text_replies_are_read_as_a_tool_without_constrained_decoding_would():
    """The baseline's reading of replies, on canned replies instead of a model."""
    class Canned(FreeText):
        def __init__(self, *replies):
            self.replies = list(replies)

        def complete(self, system, text, max_tokens=48):
            return self.replies.pop(0), 0.5
    assert Canned("Refund.", "a refund, I think").classify(["x", "y"], ["refund", "delivery"], {}) == [
        Answer("refund", 0.5), Answer(None, 0.5, True)]
    assert Canned("Yes, they are", "no", "maybe").match([("a", "b")] * 3) == [
        Answer(True, 0.5), Answer(False, 0.5), Answer(False, 0.5, True)]
    assert Canned("- Brand: Acme\ncolor: blue").extract(["t"], ["Brand", "Color", "Size"]) == [
        {"Brand": Answer("Acme", 0.5), "Color": Answer("blue", 0.5), "Size": Answer(None, 0.5, True)}]
    assert Canned("PER: Ada\nORG : Acme\nnone").entities(["t"], ["PER", "ORG"]) == [
        [Entity("PER", "Ada", 0.5), Entity("ORG", "Acme", 0.5)]]
    assert Canned("People, first name").slots(["t"], suite.SLOTS) == [
        {s: Answer(s in ("people", "first_name"), 0.5) for s in suite.SLOTS}]
    assert Canned("Blue.").enrich(["t"], "What colour?") == [Answer("Blue", 0.5)]
    assert Canned(" Boston ").clean(["boston"]) == [Answer(" Boston ", 0.5)]      # scored after strip()
