"""duckllm run without Ray: which queries split, shards that together equal the query, reruns
that compute only missing parts. On the fake runtime; the Ray side is test_distributed_ray.py."""
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SMALL_MODEL
from distributed_helpers import (  # noqa: F401
    CLASSIFY,
    TICKET_LABELS,
    engine_factory,
    inputs,
    model,
    read_parts,  # inputs, model: fixtures
    single_process,
)

from duckllm import distributed
from duckllm.cli.commands import main
from duckllm.distributed.query import columns_sql
from duckllm.errors import ArgumentError


def run(sql, out, model, folder, **options):
    return distributed.run_query(sql, out, model=model, engine_factory=engine_factory(model, folder, "run"),
                                 **options)


@pytest.mark.parametrize("sql, reason, fix", [
    ("SELECT r.label, count(*) FROM read_parquet('x.parquet') GROUP BY 1", "GROUP BY", "aggregate its output"),
    ("SELECT count(*) FROM read_parquet('x.parquet')", "aggregate COUNT(*)", "aggregate its output"),
    ("SELECT histogram(id) FROM read_parquet('x.parquet')", "aggregate HISTOGRAM(id)", "aggregate its output"),
    ("SELECT id, row_number() OVER () FROM read_parquet('x.parquet')", "window function", "on the output"),
    ("SELECT DISTINCT text FROM read_parquet('x.parquet')", "DISTINCT", "SELECT DISTINCT ... FROM read_parquet"),
    ("SELECT * FROM read_parquet('x.parquet') ORDER BY id", "ORDER BY", "keeps the input's order"),
    ("SELECT * FROM read_parquet('x.parquet') LIMIT 10", "LIMIT", "duckllm sql"),
    ("SELECT * FROM read_parquet('x.parquet') USING SAMPLE 10", "SAMPLE", "into a file first"),
    ("SELECT * FROM read_parquet('a.parquet') JOIN read_parquet('b.parquet') USING (id)", "JOIN", "Join with DuckDB first"),
    ("SELECT * FROM read_csv('a.csv') UNION ALL SELECT * FROM read_csv('b.csv')", "UNION", "its own --output"),
    ("WITH t AS (SELECT 1) SELECT * FROM read_csv('a.csv')", "WITH", "directly in FROM"),
    ("SELECT * FROM tickets", "FROM tickets", "COPY tbl TO 'tbl.parquet'"),
    ("SELECT * FROM 'x.parquet'", "FROM \"x.parquet\"", "read_parquet('data/*.parquet')"),
    ("SELECT * FROM (SELECT * FROM read_csv('a.csv'))", "each worker must read its own part", "Read files in FROM"),
    ("SELECT * FROM read_csv(getenv('X'))", "is not a string or a list of strings", "['a.csv', 'b.csv']"),
    ("SELECT 1; SELECT 2", "2 statements", "one SELECT"),
    ("INSERT INTO t SELECT * FROM read_csv('a.csv')", "INSERT statement", "Give a SELECT"),
])
def test_queries_needing_rows_of_several_shards_are_refused_with_the_fix(sql, reason, fix):
    with pytest.raises(ArgumentError) as refused:
        distributed.parse(sql)
    assert "cannot split this query into shards" in str(refused.value)
    assert reason in str(refused.value) and fix in str(refused.value)


def test_aggregates_inside_a_subquery_are_the_query_own_business():
    # a scalar subquery is read whole by every worker, so its aggregate is the same on each
    distributed.parse("SELECT llm_classify(text, (SELECT list(label) FROM read_csv('labels.csv'))) "
                      "FROM read_parquet('x.parquet')")


@pytest.mark.parametrize("sql", [
    f"SELECT id, {CLASSIFY} AS r FROM read_parquet('{{d}}/*.parquet')",
    # a list in its own order, an alias, an llm_* call in WHERE, the table's columns through *
    "SELECT * FROM read_parquet(['{d}/b.parquet', '{d}/a.parquet']) AS t "
    "WHERE llm_classify(t.text, ['refund', 'delivery']).label = 'refund'",
    "FROM read_csv('{d}/*.csv', header = true) SELECT id, llm_clean(text) AS cleaned WHERE id % 2 = 0",
    "SELECT *, llm_extract(text, {{'number': 'INTEGER'}}) AS x, filename FROM read_json('{d}/c.json')",
    # DuckDB's virtual columns stay out of t.*, and still read as the single run reads them
    "SELECT t.*, t.filename, file_row_number, llm_classify(text, ['hello', 'card']) FROM read_parquet('{d}/*.parquet') t",
    "SELECT id, (SELECT count(*) FROM read_csv('{d}/*.csv')) AS n FROM read_parquet('{d}/a.parquet') "
    "WHERE llm_classify(text, ['refund', 'hello'], instructions := 'Which?').label = 'hello'",
])
def test_the_parts_together_are_the_query_result(sql, inputs, model, tmp_path):
    sql = sql.format(d=inputs)
    result = run(sql, tmp_path / "out", model, tmp_path, rows_per_shard=5)
    assert result.computed == result.shards >= 2
    assert read_parts(tmp_path / "out") == single_process(model, tmp_path, sql)


def test_relative_paths_are_read_from_where_the_command_ran(inputs, model, tmp_path, monkeypatch):
    monkeypatch.chdir(inputs)
    sql = f"SELECT id, {CLASSIFY} AS r FROM read_parquet('*.parquet')"
    run(sql, "out", model, tmp_path, rows_per_shard=10)
    assert read_parts(inputs / "out") == single_process(model, tmp_path, sql)
    assert sorted(p.name for p in (inputs / "out").glob("*.parquet")) == [f"part-00000{i}.parquet" for i in range(5)]


def test_a_rerun_computes_only_the_parts_that_are_missing(inputs, model, tmp_path):
    flag = tmp_path / "fixed"
    # row 31 fails until the flag file exists, as a broken input or a lost worker would
    sql = (f"SELECT id, {CLASSIFY} AS r FROM read_parquet('{inputs}/*.parquet') WHERE id <> 31 "
           f"OR (SELECT count(*) FROM glob('{flag}')) > 0 OR error('row ' || id || ' is broken') IS NULL")
    out = tmp_path / "out"
    with pytest.raises(distributed.ShardError, match=r"part-000006\.parquet .*row 31 is broken"):
        run(sql, out, model, tmp_path, rows_per_shard=5)
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert sorted(finished) == [f"part-00000{i}.parquet" for i in range(6)]
    assert not list(out.glob(".*.tmp"))

    flag.touch()
    (out / ".part-000006.parquet.1234abcd.tmp").write_bytes(b"PAR1")   # from a worker killed mid-write
    again = run(sql, out, model, tmp_path, rows_per_shard=5)
    assert (again.skipped, again.computed) == (6, again.shards - 6)
    assert not list(out.glob(".*.tmp"))
    assert {p: (out / p).stat().st_mtime_ns for p in finished} == finished
    assert read_parts(out) == single_process(model, tmp_path, sql)

    done = run(sql, out, model, tmp_path, rows_per_shard=5)
    assert (done.computed, done.model_rows) == (0, 0)


def test_an_output_folder_of_another_run_is_not_mixed_in(inputs, model, tmp_path):
    out = tmp_path / "out"
    run(f"SELECT id, {CLASSIFY} AS r FROM read_parquet('{inputs}/a.parquet')", out, model, tmp_path)
    with pytest.raises(ArgumentError, match="holds parts of another run .*query differs.*new --output"):
        run(f"SELECT id, llm_clean(text) AS r FROM read_parquet('{inputs}/a.parquet')", out, model, tmp_path)
    (inputs / "b.parquet").replace(inputs / "a.parquet")   # the input changed under the same name
    with pytest.raises(ArgumentError, match="file rows differs"):
        run(f"SELECT id, {CLASSIFY} AS r FROM read_parquet('{inputs}/a.parquet')", out, model, tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.parquet").write_bytes(b"")
    with pytest.raises(ArgumentError, match="did not write"):
        run(f"SELECT id FROM read_parquet('{inputs}/a.parquet')", tmp_path / "other", model, tmp_path)


def test_an_input_without_rows_still_gives_a_part_with_the_columns(inputs, model, tmp_path):
    sql = f"SELECT id, {CLASSIFY} AS r FROM read_parquet('{inputs}/a.parquet') WHERE id < 0"
    run(sql, tmp_path / "out", model, tmp_path)
    columns, types, rows = read_parts(tmp_path / "out")
    assert (columns, rows) == (["id", "r"], [])
    assert "STRUCT" in str(types[1])


def test_mistakes_in_the_query_fail_before_any_shard_runs(inputs, model, tmp_path):
    with pytest.raises(ArgumentError, match='column "txt" not found'):
        run(f"SELECT llm_classify(txt, ['a']) FROM read_parquet('{inputs}/a.parquet')", tmp_path / "out",
            model, tmp_path)
    with pytest.raises(ArgumentError, match="no file matches"):
        run("SELECT * FROM read_parquet('/nowhere/*.parquet')", tmp_path / "out", model, tmp_path)
    assert not (tmp_path / "out").exists()


def test_with_columns_takes_row_by_row_expressions_only():
    with pytest.raises(ArgumentError, match=r"column 'n': the aggregate COUNT\(\*\) needs .* one value per row"):
        distributed.with_columns(None, {"n": "count(*)"})
    with pytest.raises(ArgumentError, match="one SQL expression"):
        distributed.with_columns(None, {"r": "1 FROM t"})
    with pytest.raises(ArgumentError, match="at least one column"):
        distributed.with_columns(None, {})
    assert columns_sql({"r": CLASSIFY}) == (
        "SELECT *, LLM_CLASSIFY(text, ['refund', 'delivery', 'card']) AS \"r\" FROM __duckllm_batch")


def test_the_command_refuses_a_query_it_cannot_split_and_says_what_to_do(tmp_path):
    result = CliRunner().invoke(main, ["run", "SELECT label, count(*) FROM read_parquet('x.parquet') GROUP BY 1",
                                       "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "GROUP BY needs the rows of every shard" in result.output
    assert f"read_parquet('{tmp_path / 'out'}/*.parquet') GROUP BY" in result.output


@pytest.mark.integration
def test_the_command_runs_in_this_process_without_ray(small_con, tmp_path):
    tickets = Path(__file__).parent / "fixtures" / "tickets.csv"
    for half, where in (("a", "id <= 3"), ("b", "id > 3")):
        small_con.execute(f"COPY (FROM read_csv('{tickets}') WHERE {where}) TO '{tmp_path}/{half}.csv'")
    sql = f"SELECT id, {TICKET_LABELS} AS r FROM read_csv('{tmp_path}/*.csv')"
    result = CliRunner().invoke(main, ["run", sql, "-o", str(tmp_path / "out"), "--rows-per-shard", "3",
                                       "--model", SMALL_MODEL, "--cache", "off"])
    assert result.exit_code == 0, result.output
    assert "[2/2] part-000001.parquet: 3 rows, 2 from the model" in result.output   # one text is NULL
    assert f"SELECT * FROM read_parquet('{tmp_path / 'out'}/*.parquet')" in result.stdout
    small_con.execute("SET VARIABLE duckllm_cache = false")
    # a shard is a file here, as a call of the plain query is: the same answers, to the last digit
    assert read_parts(tmp_path / "out")[2] == small_con.sql(sql).fetchall()
