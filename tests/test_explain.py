"""duckllm explain on the fake runtime: the probes sqlglot builds, exact counts of rows, distinct
inputs and cached answers, estimates from this machine's speed, and asking before a long query."""
import io

import duckdb
import pytest
import sqlglot

import duckllm
from duckllm.cli import output, session
from duckllm.engine import speed
from duckllm.prompt_format import FORMATS
from duckllm.sql import explain
from duckllm.tasks import classify

NAMES = {"llm_classify", "llm_match", "llm_clean"}


@pytest.mark.parametrize("query, probes", [
    ("SELECT llm_clean(t) FROM x", ["SELECT COUNT(llm_clean(t)) FROM x"]),
    ("SELECT id, llm_classify(t, ['a', 'b']) AS r FROM x WHERE id > 3 ORDER BY r.confidence LIMIT 5",
     ["SELECT COUNT(llm_classify(t, ['a', 'b'])) FROM x WHERE id > 3"]),          # sorted: every row
    ("SELECT llm_clean(t) FROM x LIMIT 5", ["SELECT COUNT(llm_clean(t)) FROM x LIMIT 5"]),
    ("SELECT a.id FROM a JOIN b ON a.k = b.k AND llm_match(a.t, b.t).match WHERE a.id > 1",
     ["SELECT COUNT(llm_match(a.t, b.t)) FROM a JOIN b ON a.k = b.k AND llm_match(a.t, b.t).match WHERE a.id > 1"]),
    ("SELECT llm_clean(t) FROM x WHERE llm_classify(t, ['a']).label = 'a' AND (k = 1 OR k = 2)",
     ["SELECT COUNT(llm_clean(t)) FROM x WHERE k = 1 OR k = 2",                   # the model's filter dropped
      "SELECT COUNT(llm_classify(t, ['a'])) FROM x WHERE k = 1 OR k = 2"]),
    ("WITH x AS (SELECT * FROM read_csv('f.csv')) SELECT llm_clean(t) FROM x",
     ["WITH x AS (SELECT * FROM READ_CSV('f.csv')) SELECT COUNT(llm_clean(t)) FROM x"]),
    ("CREATE TABLE y AS SELECT llm_clean(t) AS v FROM x", ["SELECT COUNT(llm_clean(t)) FROM x"]),
    ("COPY (SELECT llm_clean(t) FROM x) TO 'out.parquet'", ["SELECT COUNT(llm_clean(t)) FROM x"]),
    ("SELECT llm_clean(llm_classify(t, ['a']).label) FROM x",                    # the outer call only
     ["SELECT COUNT(llm_clean(llm_classify(t, ['a']).label)) FROM x"]),
    ("SELECT count(*) FROM x", []),
])
def test_each_call_gets_a_probe_over_the_rows_it_sees(query, probes):
    tree = sqlglot.parse_one(query, read="duckdb")
    assert [explain.probe(tree, c, NAMES) for c in explain.llm_calls(tree, NAMES)] == probes


@pytest.fixture
def planned(fake_con, fake_engine, fake_runtime):
    """A connection on the fake runtime, its engine, and the runtime."""
    con, engine, runtime = fake_con, fake_engine, fake_runtime
    con.execute("CREATE TABLE tickets AS SELECT i AS id, CASE WHEN i % 25 = 0 THEN NULL "
                "ELSE 'ticket number ' || (i % 10) END AS text FROM range(100) r(i)")
    return con, engine, runtime


QUERY = "SELECT id, llm_classify(text, ['refund', 'delivery']) AS r FROM tickets WHERE id < 50"


def test_counts_rows_distinct_and_cached_without_running_the_model(planned):
    con, engine, runtime = planned
    [e] = explain.explain(con, QUERY, engine)
    assert (e.function, e.model, e.rows, e.distinct, e.cached, e.to_compute) == \
        ("llm_classify", "fake", 48, 10, 0, 10)   # ids 0 and 25 are NULL
    assert runtime.calls == []                    # nothing was answered
    # the fake tokenizer splits at spaces: 3 a text and 2 in ChatML's tail after it, and the
    # shared prompt (instructions, labels) once
    shared = FORMATS["chatml"].split(list(classify.build(["refund", "delivery"]).messages)).shared
    assert e.prompt_tokens == 10 * (3 + 2) + len(str(shared).split())
    assert e.seconds == pytest.approx(e.prompt_tokens / (100.0 * speed.COLD_SHARE))

    con.execute("SELECT r.label FROM (" + QUERY + ") WHERE id < 20").fetchall()    # 10 texts answered
    [again] = explain.explain(con, QUERY, engine)
    assert (again.cached, again.to_compute, again.prompt_tokens, again.seconds) == (10, 0, 0, 0)


def test_plans_on_the_engine_that_answers_the_connection(planned):
    """Not the process's default engine: its probes would have run the connection's model."""
    con, engine, runtime = planned
    for c in (con, duckllm.register(con.cursor(), model="fake")):   # its UDFs are the database's first
        assert duckllm.sql.engine_of(c) is engine
        [e] = explain.explain(c, QUERY)
        assert (e.model, e.distinct, runtime.calls) == ("fake", 10, [])
    assert duckllm.sql.engine_of(duckdb.connect()) is duckllm.sql.default_engine()


def test_estimates_use_the_speed_earlier_runs_reached(planned):
    con, engine, _ = planned
    engine.speeds.record(engine.model("fake").identity, "llm_classify", prompt_tokens=1000, seconds=4)
    [e] = explain.explain(con, QUERY, engine)
    assert e.seconds == pytest.approx(e.prompt_tokens / 250) and "last run here" in e.speed_source


def test_argument_errors_show_before_anything_runs(planned):
    con, engine, runtime = planned
    with pytest.raises(duckdb.Error, match="label 'a' appears twice"):
        explain.explain(con, "SELECT llm_classify(text, ['a', 'a']) FROM tickets", engine)
    with pytest.raises(duckllm.ArgumentError, match="cannot read the query"):
        explain.explain(con, "SELEC llm_clean(text) FROM tickets", engine)


def test_the_table_shows_each_call_and_the_total(planned):
    con, engine, _ = planned
    estimates = explain.explain(con, QUERY + "; SELECT llm_clean(text) FROM tickets", engine)
    text = explain.render(estimates)
    lines = text.splitlines()
    assert lines[0].split() == ["call", "rows", "distinct", "cached", "to", "compute", "prompt", "tokens",
                                "est.", "time"]
    for line, e, rows in zip(lines[2:4], estimates, (48, 96)):      # NULLs are rows 0, 25, 50, 75
        assert line.startswith(e.call[:20])
        assert line.split()[-7:] == [str(rows), "10", "0", "10", str(e.prompt_tokens), f"{e.seconds:.1f}", "s"]
    assert "total: 20 inputs to compute" in text and "speed: fake: 60 tok/s" in text
    assert explain.render([]) == "no llm_* calls in this query: it asks nothing of a model"


def test_a_long_statement_is_asked_about_and_can_be_declined(planned, monkeypatch, capsys):
    con, engine, runtime = planned
    asked = []
    no = lambda question: asked.append(question) or False   # noqa: E731
    session.run_statements(con, "CREATE TABLE quick AS SELECT 1; CREATE TABLE labeled AS " + QUERY,
                           confirm=session.ask_when_long(con, threshold=0.5, ask=no))
    assert asked == [session.LONG_QUERY] and runtime.calls == []     # asked about the llm statement only
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'labeled'").fetchone()[0] == 0
    said = capsys.readouterr().err
    assert "total: 10 inputs to compute" in said and session.NOT_RUN in said
    session.run_statements(con, "CREATE TABLE labeled AS " + QUERY, confirm=session.ask_when_long(con, 60, no))
    assert len(asked) == 1 and runtime.calls                  # short: run without asking


@pytest.mark.parametrize("mode, printed", [
    ("csv", "id,name\n1,a\n2,\n"),
    ("json", '[\n {\n  "id": 1,\n  "name": "a"\n },\n {\n  "id": 2,\n  "name": null\n }\n]\n'),
    ("markdown", "| id | name |\n|---|---|\n| 1 | a |\n| 2 | NULL |\n"),
    ("line", "  id = 1\nname = a\n\n  id = 2\nname = NULL\n"),
    ("list", "id|name\n1|a\n2|NULL\n"),
])
def test_output_modes(mode, printed):
    out = io.StringIO()
    output.show(duckdb.sql("SELECT * FROM (VALUES (1, 'a'), (2, NULL)) v(id, name)"), mode, out)
    assert out.getvalue() == printed
