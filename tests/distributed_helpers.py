"""What the duckllm.distributed tests share: input files, and the fake engine each worker builds
(a Ray worker imports this module by name: the tests put tests/ on the workers' PYTHONPATH)."""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import duckdb
import pytest
from fakes import FakeRuntime

import duckllm
from duckllm.engine import Engine, models
from duckllm.settings import Settings

CLASSIFY = "llm_classify(text, ['refund', 'delivery', 'card'])"
TICKET_LABELS = "llm_classify(text, ['refund', 'delivery', 'account', 'card_lost'])"
TEXTS = ["please refund me {}", "where is my delivery {}", "I lost my card {}", "refund or delivery {}",
         "hello {}", "", None]


class SlowFakeRuntime(FakeRuntime):
    """The fake runtime, a second per call: a shard is still running when a test kills its worker."""

    def run(self, *args, **kwargs):
        time.sleep(1)
        return super().run(*args, **kwargs)


def fake_engine(model_path: str, cache_path: str, slow: bool = False) -> Engine:
    """The fake runtime (instant, deterministic), registered in this process (a worker's too)
    under a fake .gguf path, with its own cache."""
    runtime = SlowFakeRuntime if slow else FakeRuntime
    models.register(model_path, lambda settings: runtime())
    return Engine(Settings.from_env(model=model_path, cache_path=cache_path))


def fake_model(folder: Path) -> str:
    """A file that passes as a model path (GGUF magic); the fake runtime never reads it."""
    path = folder / "fake.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return str(path)


def engine_factory(model: str, folder: Path, name: str, slow: bool = False) -> functools.partial:
    return functools.partial(fake_engine, model, str(folder / f"{name}-cache.sqlite"), slow)


def single_process(model: str, folder: Path, sql: str):
    """The query run as one plain local DuckDB query: the result every split run must equal."""
    con = duckllm.register(duckdb.connect(), model=model, engine=engine_factory(model, folder, "single")())
    result = con.sql(sql)
    return result.columns, result.types, result.fetchall()


def read_parts(folder: Path):
    result = duckdb.connect().sql(f"SELECT * FROM read_parquet('{folder}/*.parquet')")
    return result.columns, result.types, result.fetchall()


def write_inputs(folder: Path) -> Path:
    """tickets in two Parquet files (23 and 17 rows), two CSV files and a JSON file; NULL and blank
    texts among them."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    rows = [(i, None if TEXTS[i % 7] is None else TEXTS[i % 7].format(i)) for i in range(40)]
    con.execute("CREATE TABLE t (id INTEGER, text VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", rows)
    con.execute(f"COPY (FROM t WHERE id < 23) TO '{folder}/a.parquet'")
    con.execute(f"COPY (FROM t WHERE id >= 23) TO '{folder}/b.parquet'")
    con.execute(f"COPY (FROM t WHERE id < 12) TO '{folder}/a.csv'")
    con.execute(f"COPY (FROM t WHERE id >= 12 AND id < 20) TO '{folder}/b.csv'")
    (folder / "c.json").write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in rows[:9]))
    return folder


@pytest.fixture
def inputs(tmp_path):
    """The input files of write_inputs, in a folder of the test's own."""
    return write_inputs(tmp_path / "in")


@pytest.fixture
def model(tmp_path):
    """A fake model path for the fake engine."""
    return fake_model(tmp_path)
