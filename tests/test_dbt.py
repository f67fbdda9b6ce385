"""dbt: the dbt-duckdb plugin (duckllm.dbt), the dbt macros (sql_macros/dbt) and the example
project (examples/dbt_project), built twice by the real dbt CLI, the second time from the cache."""
import csv
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytest.importorskip("dbt.adapters.duckdb", reason="dbt-duckdb is not installed: pip install 'duckllm[dbt]'")

import jinja2  # noqa: E402  (dbt brings it)
from conftest import SMALL_MODEL  # noqa: E402
from dbt.adapters.duckdb.plugins import BasePlugin  # noqa: E402

import duckllm.dbt  # noqa: E402
from duckllm.errors import ArgumentError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dbt_project"
LABELS = {"refund", "delivery", "account", "other"}


# --- the plugin -------------------------------------------------------------------------------

@pytest.fixture
def dbt_like_cursor():
    """What dbt-duckdb does with a profile's plugin: create it, configure the connection, then
    run each statement on a configured cursor of it. The connection outlives its cursors, as
    dbt's does: the Python UDFs belong to it."""
    connections = []

    def cursor_for(config):
        plugin = BasePlugin.create("duckllm.dbt", config=config)
        connections.append(duckdb.connect())
        plugin.configure_connection(connections[-1])
        cursor = connections[-1].cursor()
        plugin.configure_cursor(cursor)
        return cursor

    yield cursor_for
    for con in connections:
        con.close()


def test_a_cursor_of_a_configured_connection_answers_with_the_configured_model(fake_runtime, dbt_like_cursor):
    cursor = dbt_like_cursor({"model": "fake"})
    label = cursor.execute("SELECT llm_classify('refund me', ['delivery', 'refund']).label").fetchone()[0]
    assert label == "refund" and fake_runtime.calls == [["refund me"]]
    assert cursor.execute("SELECT getvariable('duckllm_model')").fetchone()[0] == "fake"


def test_cache_false_in_the_config_asks_the_model_every_time(fake_runtime, dbt_like_cursor):
    for cache in (True, "false"):          # env_var() hands profiles.yml values over as text
        cursor = dbt_like_cursor({"model": "fake", "cache": cache})
        for _ in range(2):
            cursor.execute("SELECT llm_clean('jOHN smiht')").fetchall()
    assert fake_runtime.calls == [["jOHN smiht"]] * 3    # cached once; then asked twice without the cache


def test_unknown_config_names_the_options_and_duckdb_settings_pass_through():
    with pytest.raises(ArgumentError, match="unknown config 'modle'; the options are cache, model"):
        BasePlugin.create("duckllm.dbt", config={"modle": "fake"})
    with pytest.raises(ArgumentError, match="cache must be true or false, got 'sometimes'"):
        BasePlugin.create("duckllm.dbt", config={"cache": "sometimes"})
    creds = type("Credentials", (), {"settings": {"threads": 2}})()   # dbt-duckdb merges settings in
    assert BasePlugin.create("duckllm.dbt", config={"threads": 2}, credentials=creds).model is None


def test_the_plugin_makes_its_settings_from_the_config_over_the_environment(monkeypatch):
    monkeypatch.setenv("DUCKLLM_CACHE", "0")
    assert BasePlugin.create("duckllm.dbt", config={"model": "fake"}).settings.cache is False
    assert BasePlugin.create("duckllm.dbt", config={"cache": True}).settings.cache is True
    monkeypatch.setenv("DUCKLLM_CONTEXT", "4k")     # a bad setting stops dbt before any model is built
    with pytest.raises(ArgumentError, match="DUCKLLM_CONTEXT='4k' is not a whole number from 1; set it like"):
        BasePlugin.create("duckllm.dbt", config={})


def test_without_dbt_the_import_says_what_to_install():
    code = "import sys; sys.modules['dbt'] = None; import duckllm.dbt"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1
    assert "ImportError: duckllm.dbt is a dbt-duckdb plugin and needs dbt-core and dbt-duckdb: " \
           "pip install 'duckllm[dbt]'" in run.stderr


# --- the macros, rendered by Jinja as dbt renders them, run on the fake runtime ---------------

@pytest.fixture(scope="module")
def macros():
    """The package's macros as `duckllm.<name>` (private ones too, as dbt exposes them)."""
    folder = duckllm.dbt.package_path() / "macros"
    template = jinja2.Environment(extensions=["jinja2.ext.do"]).from_string(
        "".join((folder / name).read_text() for name in ("functions.sql", "patterns.sql", "calibration.sql")))
    namespace = type("Package", (), {})()
    context = template.new_context({"duckllm": namespace})
    for _ in template.root_render_func(context):
        pass
    vars(namespace).update({name: value for name, value in context.vars.items()
                            if isinstance(value, jinja2.runtime.Macro)})
    return namespace


@pytest.mark.parametrize("value, sql_text", [
    (None, "NULL"), (True, "true"), (0.6, "0.6"), (3, "3"), ("it's", "'it''s'"),
    (["a", "b"], "['a', 'b']"), ({"refund": "money back", "n": [1, 2]}, "{'refund': 'money back', 'n': [1, 2]}"),
    ({}, "NULL"),
])
def test_literal_writes_jinja_values_as_duckdb_literals(macros, value, sql_text):
    assert str(macros.literal(value)) == sql_text


def rounded(value):
    """Floats to 3 places, inside lists and structs, so answers compare as written."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


# The fake runtime picks the first option the text names (confidence 0.9, else the first option,
# 0.4) and writes the text title-cased (0.8); see tests/fakes.py.
TEXT = "please refund my order from Berlin, 2 items"
REFUND = {"label": "refund", "confidence": 0.9, "note": None, "answered_by": None}
TITLED = "Please Refund My Order From Berlin, 2 Items"


@pytest.mark.parametrize("macro, args, kwargs, answer", [
    ("classify", ["text", ["delivery", "refund"]], {"descriptions": {"refund": "wants money back, isn't happy"}},
     REFUND),
    ("classify", ["text", "['delivery', 'refund']"], {"instructions": "Pick one.", "confidence": "choice"}, REFUND),
    ("classify_multi", ["text", ["refund", "account"]], {"threshold": 0.3},
     [{"label": "refund", "confidence": 0.4}, {"label": "account", "confidence": 0.4}]),
    ("clean", ["text"], {"examples": [{"input": "jOHN", "output": "John"}], "instructions": "Fix the casing."},
     {"value": TITLED, "confidence": 0.8, "changed": True, "note": None}),
    ("match", ["text", "'refund order'"], {"instructions": "Same request?"},
     {"match": True, "confidence": 0.4, "note": None, "answered_by": None}),
    ("extract", ["text", {"items": "INTEGER"}], {}, {"items": 2, "confidence": {"items": 0.6}, "note": None}),
    ("entities", ["text"], {"types": ["LOC"], "max_entities": 2}, [{"text": "Berlin", "type": "LOC", "confidence": 0.55}]),
    ("enrich", ["text", "Which city?"], {"max_tokens": 16},
     {"value": TITLED, "confidence": 0.8, "truncated": False, "note": None}),
    ("label_or_null", ["text", ["delivery", "refund"], 0.5], {}, "refund"),
    ("label_or_null", ["text", ["delivery", "refund"], 0.95], {"descriptions": ["late", "money back"]}, None),
    ("classify_cascade", ["text", ["delivery", "refund"], "fake", "fake"], {"below": 0.5}, REFUND),
    ("abstain", ["r.label", "r.confidence", 0.8], {}, "refund"),
    ("abstain", ["r.label", "r.confidence", 0.95], {}, None),
    ("needs_review", ["r.confidence"], {"threshold": 0.95}, True),
    ("needs_review", ["NULL"], {}, True),
    ("needs_review", ["r.confidence"], {}, False),
])
def test_each_macro_renders_sql_that_duckdb_runs(macros, fake_con, macro, args, kwargs, answer):
    fake_con.execute("CREATE TABLE t AS SELECT ? AS text, {'label': 'refund', 'confidence': 0.9} AS r", [TEXT])
    rendered = getattr(macros, macro)(*args, **kwargs)
    assert rounded(fake_con.execute(f"SELECT {rendered} FROM t").fetchone()[0]) == answer


def test_calibrate_and_thresholds_render_the_sql_calls(macros, fake_con):
    fake_con.execute("CREATE TABLE reviewed AS SELECT 'message ' || i AS msg, "
                     "CASE WHEN i % 3 = 0 THEN 'delivery' ELSE 'refund' END AS label FROM range(60) t(i)")
    rows = macros.labeled_rows("reviewed", "msg", "label")
    report = fake_con.sql(str(macros.calibrate("llm_classify", rows, labels=["refund", "delivery"]))).df()
    assert report["chosen"].sum() == 1 and (report["rows"] == 60).all()
    cuts = fake_con.sql(str(macros.thresholds("llm_classify", rows, labels=["refund", "delivery"], coverage=0.5)))
    assert cuts.df()["target"].tolist() == ["coverage 0.5"]
    answer = fake_con.execute(f"SELECT {macros.classify(repr('message 7'), ['refund', 'delivery'])}").fetchall()[0][0]
    assert answer["note"].startswith("confidence calibrated")


def test_review_queue_lists_the_unsure_and_unanswered_rows_least_confident_first(macros, fake_con):
    fake_con.execute("CREATE TABLE labeled AS SELECT * FROM (VALUES (1, 0.9), (2, 0.3), (3, NULL), (4, 0.6)) v(id, confidence)")
    rows = fake_con.execute(str(macros.review_queue("labeled", "confidence", threshold=0.7))).fetchall()
    assert [row[0] for row in rows] == [3, 2, 4]


# --- the example project, built by the dbt CLI on the small model -----------------------------

def dbt(*args, cwd, env):
    """The dbt CLI of this Python, as a user runs it; its output is returned on success."""
    script = Path(sys.executable).with_name("dbt")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dbt.cli.main"]
    run = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"dbt {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    return run.stdout


def stats_line(output: str) -> dict[str, int]:
    """The on-run-end hook's line: duckllm: N rows, N answered by the model, N from the cache, ..."""
    line = re.search(r"duckllm: (\d+) rows, (\d+) answered by the model, (\d+) from the cache, "
                     r"(\d+) deduplicated; [\d.]+ s on (.+)", output)
    assert line, output
    return dict(zip(["rows", "model_rows", "cache_hits", "dedup_hits"], map(int, line.groups()[:4])),
                device=line.group(5).strip())


def cached_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM results").fetchone()[0]


def tables(database: Path) -> dict[str, list[dict]]:
    """The project's output, read by plain DuckDB: a table needs no duckllm to be read."""
    with duckdb.connect(str(database), read_only=True) as con:
        out = {}
        for name in ("classified_tickets", "tickets_to_review"):
            cursor = con.execute(f"SELECT * FROM {name} ORDER BY ticket_id")
            columns = [column[0] for column in cursor.description]
            out[name] = [dict(zip(columns, row)) for row in cursor.fetchall()]
        return out


@pytest.mark.integration
def test_example_dbt_project_builds_and_rebuilds_from_the_cache(home, tmp_path):
    project = tmp_path / "dbt_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(
        "target", "dbt_packages", "logs", "package-lock.yml", "*.duckdb", "*.duckdb.wal"))
    # A view that calls a function: dbt creates it without running it; who reads it needs duckllm.
    (project / "models" / "ticket_one_view.sql").write_text(
        "{{ config(materialized='view') }}\n"
        "SELECT {{ duckllm.classify('body', ['refund', 'delivery']) }}.label AS label\n"
        "FROM {{ ref('support_tickets') }} WHERE ticket_id = 1\n")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("DBT_", "DUCKLLM_"))}
    env.update(DUCKLLM_HOME=str(home), DUCKLLM_DBT_MODEL=SMALL_MODEL, DUCKLLM_PROGRESS="0",
               DUCKLLM_DBT_PACKAGE=str(duckllm.dbt.package_path()), DBT_USE_COLORS="false",
               DBT_SEND_ANONYMOUS_USAGE_STATS="false")

    dbt("deps", cwd=project, env=env)
    first = dbt("build", "--profiles-dir", ".", cwd=project, env=env)
    after_first = tables(project / "tickets.duckdb")
    computed = cached_rows(home / "cache.sqlite")     # one row per distinct question the model answered
    second = dbt("build", "--profiles-dir", ".", cwd=project, env=env)

    assert "ERROR=0" in first and "ERROR=0" in second
    tickets = list(csv.DictReader((project / "seeds" / "support_tickets.csv").open()))
    with_text = [t for t in tickets if t["body"].strip()]
    asked = len(tickets) + len(with_text)      # a clean per customer, a classify per ticket with text
    counts = stats_line(first)
    assert counts.pop("device") != "none loaded"
    assert counts == {"rows": asked, "model_rows": computed, "cache_hits": 0, "dedup_hits": asked - computed}
    # the second build reads every answer from the cache: the model is not even loaded
    assert stats_line(second) == {"rows": asked, "model_rows": 0, "cache_hits": computed,
                                  "dedup_hits": asked - computed, "device": "none loaded"}
    assert cached_rows(home / "cache.sqlite") == computed

    output = tables(project / "tickets.duckdb")
    assert output == after_first
    rows = output["classified_tickets"]
    assert [row["ticket_id"] for row in rows] == [int(t["ticket_id"]) for t in tickets]
    for ticket, row in zip(tickets, rows):
        if ticket["body"].strip():
            assert row["label"] in LABELS and 0 <= row["confidence"] <= 1
            assert row["needs_review"] == (row["confidence"] < 0.6)
            assert row["confident_label"] == (None if row["needs_review"] else row["label"])
        else:     # no text, no label: the ticket waits for a person
            assert row["label"] is None and row["confidence"] is None and row["needs_review"]
        assert row["customer"].strip()
    review = output["tickets_to_review"]
    assert {row["ticket_id"] for row in review} == {row["ticket_id"] for row in rows if row["needs_review"]}

    database = str(project / "tickets.duckdb")
    with duckdb.connect(database, read_only=True) as plain, \
            pytest.raises(duckdb.CatalogException, match="Scalar Function with name llm_classify does not exist"):
        plain.execute("SELECT * FROM ticket_one_view").fetchall()
    with duckllm.connect(database, model=SMALL_MODEL, read_only=True) as con:
        assert con.execute("SELECT label FROM ticket_one_view").fetchone()[0] in {"refund", "delivery"}
