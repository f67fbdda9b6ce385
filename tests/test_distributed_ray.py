"""duckllm on a local Ray cluster (ray.init(num_cpus=2)): `duckllm run --ray` and with_columns on
Ray Datasets, first on the fake runtime (exact results), then on the real small model."""
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]'")

from conftest import SMALL_MODEL  # noqa: E402
from distributed_helpers import (  # noqa: E402,F401
    CLASSIFY,
    TICKET_LABELS,
    engine_factory,
    inputs,
    model,
    read_parts,  # inputs, model: fixtures
    single_process,
)

from duckllm import distributed  # noqa: E402
from duckllm.cli.commands import main  # noqa: E402

pytestmark = pytest.mark.integration   # starts a Ray cluster: a minute of setup, not a unit test
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster():
    # workers import the fake engine from tests/ by name
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}})
    yield
    ray.shutdown()


def test_on_ray_the_parts_together_are_the_query_result(cluster, inputs, model, tmp_path):
    sql = f"SELECT id, {CLASSIFY} AS r, filename FROM read_parquet('{inputs}/*.parquet') WHERE id % 3 <> 0"
    seen = []
    result = distributed.run_query(sql, tmp_path / "out", ray=True, workers=2, model=model, rows_per_shard=6,
                                   engine_factory=engine_factory(model, tmp_path, "ray"), progress=seen.append)
    assert result.computed == result.shards == 7 and result.rows == 26
    assert sorted(s["part"] for s in seen) == [f"part-00000{i}.parquet" for i in range(7)]
    assert all(s["device"] == "fake" for s in seen)
    assert read_parts(tmp_path / "out") == single_process(model, tmp_path, sql)


def test_on_ray_a_failed_shard_keeps_the_others_and_a_rerun_finishes_only_it(cluster, inputs, model, tmp_path):
    flag = tmp_path / "fixed"
    sql = (f"SELECT id, {CLASSIFY} AS r FROM read_parquet('{inputs}/*.parquet') WHERE id <> 25 "
           f"OR (SELECT count(*) FROM glob('{flag}')) > 0 OR error('row ' || id || ' is broken') IS NULL")
    out, factory = tmp_path / "out", engine_factory(model, tmp_path, "ray")
    with pytest.raises(distributed.ShardError) as failed:
        distributed.run_query(sql, out, ray=True, workers=2, model=model, rows_per_shard=5, engine_factory=factory)
    assert "part-000005.parquet" in str(failed.value) and "row 25 is broken" in str(failed.value)
    assert "run the same command again" in str(failed.value)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert "part-000005.parquet" not in kept

    flag.touch()
    again = distributed.run_query(sql, out, ray=True, workers=2, model=model, rows_per_shard=5, engine_factory=factory)
    # a shard the other worker had in hand when the failure came may have finished after it
    assert again.skipped >= len(kept) and again.skipped + again.computed == again.shards > again.skipped
    assert {p: (out / p).stat().st_mtime_ns for p in kept} == kept
    assert read_parts(out) == single_process(model, tmp_path, sql)


def test_on_ray_a_killed_worker_is_replaced_and_its_shard_computed_again(cluster, inputs, model, tmp_path):
    sql = f"SELECT id, {CLASSIFY} AS r FROM read_parquet('{inputs}/*.parquet')"
    killed, seen = [], []

    def kill_the_first_worker_to_report(shard):
        # it is given its next shard at once (each takes a second), and dies in the middle of it
        seen.append(shard["worker"])
        if not killed:
            killed.append(int(shard["worker"].rsplit(":", 1)[1]))
            os.kill(killed[0], signal.SIGKILL)
    result = distributed.run_query(sql, tmp_path / "out", ray=True, workers=2, model=model, rows_per_shard=5,
                                   engine_factory=engine_factory(model, tmp_path, "ray", slow=True),
                                   progress=kill_the_first_worker_to_report)
    assert result.computed == result.shards == 9
    assert len(set(seen)) == 3   # the two workers, then the one Ray started in place of the killed one
    assert read_parts(tmp_path / "out") == single_process(model, tmp_path, sql)


def test_with_columns_adds_struct_columns_to_a_ray_dataset(cluster, inputs, model, tmp_path):
    ds = ray.data.read_parquet(str(inputs / "a.parquet"))
    labeled = distributed.with_columns(ds, {"r": CLASSIFY, "clean": "llm_clean(text)"}, model=model,
                                       workers=1, batch_size=8, engine_factory=engine_factory(model, tmp_path, "ds"))
    rows = sorted(labeled.take_all(), key=lambda r: r["id"])
    expected = single_process(model, tmp_path, f"SELECT *, {CLASSIFY} AS r, llm_clean(text) AS clean "
                                                f"FROM read_parquet('{inputs}/a.parquet') ORDER BY id")
    assert [tuple(r.values()) for r in rows] == expected[2]
    assert list(labeled.schema().names) == ["id", "text", "r", "clean"]


def test_on_ray_with_the_model_results_equal_one_process(cluster, small_con, tmp_path):
    """The real model: parts from two workers against a plain local query on the same rows, both
    computing (no cache). A shard covers what one call of the plain query covers (here a file of
    5 rows; DuckDB hands a UDF at most one 2048-row vector of one file), so the model decodes the
    same rows together and the answers are the same to the last digit."""
    texts = ["I was charged twice and want my money back", "my parcel has not arrived yet",
             "I cannot log in to my account", "I lost my card on the train"]
    for f in range(4):
        small_con.execute(f"COPY (SELECT {f} * 5 + i AS id, 'ticket ' || ({f} * 5 + i) || ': ' || "
                          f"(?)[1 + (i + {f}) % 4] AS text FROM range(5) r(i)) TO '{tmp_path}/t{f}.parquet'", [texts])
    sql = f"SELECT id, {TICKET_LABELS} AS r FROM read_parquet('{tmp_path}/t*.parquet')"
    result = CliRunner().invoke(main, ["run", "--ray", sql, "-o", str(tmp_path / "out"), "--model", SMALL_MODEL,
                                       "--cache", "off", "--workers", "2", "--rows-per-shard", "5"])
    assert result.exit_code == 0, result.output
    assert "4 parts computed" in result.output
    assert len({line.rsplit(" on ", 1)[1] for line in result.output.splitlines() if "] part-" in line}) == 2

    small_con.execute("SET VARIABLE duckllm_cache = false")
    assert read_parts(tmp_path / "out")[2] == small_con.sql(sql).fetchall()


def test_on_ray_workers_share_a_cache_file_when_given_one(cluster, small_model_path, tmp_path):
    tickets = f"{TESTS}/fixtures/tickets.csv"
    sql = f"SELECT id, {TICKET_LABELS} AS r FROM read_csv('{tickets}')"
    runs = [CliRunner().invoke(main, ["run", "--ray", sql, "-o", str(tmp_path / out), "--model", SMALL_MODEL,
                                      "--cache", str(tmp_path / "shared.sqlite"), "--workers", "2",
                                      "--rows-per-shard", "3"]) for out in ("first", "second")]
    assert all(run.exit_code == 0 for run in runs), runs[-1].output
    assert "(5 from the model, 0 from the cache)" in runs[0].output   # 6 tickets, one NULL text
    assert "(0 from the model, 5 from the cache)" in runs[1].output
    assert read_parts(tmp_path / "first") == read_parts(tmp_path / "second")


def test_with_columns_with_the_model_equals_one_query(cluster, small_con, tmp_path):
    small_con.execute(f"COPY (SELECT * FROM read_csv('{TESTS}/fixtures/tickets.csv')) TO '{tmp_path}/t.parquet'")
    ds = ray.data.read_parquet(str(tmp_path / "t.parquet"))
    labeled = distributed.with_columns(ds, {"r": TICKET_LABELS}, model=SMALL_MODEL, cache=False, workers=1)
    small_con.execute("SET VARIABLE duckllm_cache = false")
    # one batch, as the plain query makes one call: the same rows decoded together
    alone = small_con.sql(f"SELECT *, {TICKET_LABELS} AS r FROM read_parquet('{tmp_path}/t.parquet')").fetchall()
    assert [tuple(row.values()) for row in labeled.take_all()] == alone
    assert {r[2]["label"] for r in alone if r[2]} <= {"refund", "delivery", "account", "card_lost"}
