"""Dedup, the persistent result cache, statistics and progress, on the fake runtime."""
import io
import sqlite3
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner
from fakes import FakeRuntime

from duckllm.cli.commands import main
from duckllm.engine import Engine
from duckllm.engine.cache import ResultCache
from duckllm.engine.progress import Progress
from duckllm.tasks import classify

TEN = "SELECT llm_classify(t, ['refund', 'delivery']) FROM (SELECT 'ticket ' || (i % 10) AS t FROM range(100) r(i))"


def model_rows(runtime):
    return sum(len(texts) for texts in runtime.calls)


def stats(con):
    cols = [d[0] for d in con.execute("SELECT * FROM duckllm_stats()").description]
    return dict(zip(cols, con.execute("SELECT * FROM duckllm_stats()").fetchone()))


def test_repeats_are_computed_once_and_a_rerun_comes_from_the_cache(fake_con, fake_runtime):
    first = fake_con.execute(TEN).fetchall()
    assert model_rows(fake_runtime) == 10
    s = stats(fake_con)
    assert (s["rows"], s["dedup_hits"], s["model_rows"], s["cache_hits"]) == (100, 90, 10, 0)
    assert fake_con.execute(TEN).fetchall() == first
    assert model_rows(fake_runtime) == 10
    s = stats(fake_con)
    assert (s["calls"], s["rows"], s["cache_hits"], s["model_rows"]) == (2, 200, 10, 10)
    assert s["device"] == "fake" and s["seconds"] > 0


def test_the_cache_can_be_bypassed(fake_con, fake_runtime):
    fake_con.execute(TEN).fetchall()
    fake_con.execute("SET VARIABLE duckllm_cache = false")
    fake_con.execute(TEN).fetchall()
    assert model_rows(fake_runtime) == 20


def test_other_options_or_models_are_other_keys(fake_con, fake_runtime):
    fake_con.execute(TEN).fetchall()
    fake_con.execute(TEN.replace("])", "], instructions := 'Tickets.')")).fetchall()
    assert model_rows(fake_runtime) == 20


class Interrupted(FakeRuntime):
    """Answers 100 rows, then is interrupted as by Ctrl-C."""

    def answered(self, i, answer, on_done):
        if i == 100:
            raise KeyboardInterrupt
        super().answered(i, answer, on_done)


def test_an_interrupted_run_keeps_its_finished_rows(engine_on):
    texts = [f"row {i}" for i in range(200)]
    task = classify.build(["a", "b"])
    with pytest.raises(KeyboardInterrupt):
        engine_on(Interrupted()).run(task, texts)
    rerun = engine_on(FakeRuntime())
    assert sum(n for _, n in rerun.cache.stats()) == 100
    results = rerun.run(task, texts)
    assert model_rows(rerun.runtime()) == 100 and all(r["label"] in ("a", "b") for r in results)


def test_an_unwritable_cache_is_a_warning_and_the_query_still_answers(fake_engine, tmp_path, capsys):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    engine = Engine(fake_engine.settings.with_cache(blocked / "cache.sqlite"))
    results = engine.run(classify.build(["a", "b"]), ["x", "y b"])
    # answered as without a cache: the fake picks the first label named in the text, else the first
    assert [r["label"] for r in results] == ["a", "b"]
    assert "result cache off" in capsys.readouterr().err


WRITER = """
import sys
from duckllm.engine.cache import ResultCache
c = ResultCache(sys.argv[1])
for i in range(300):
    c.put_many('llm_classify', [(f'{sys.argv[2]}-{i}', {'label': 'a', 'n': i})])
"""


def test_two_processes_and_threads_share_one_cache_file(tmp_path):
    path = tmp_path / "shared.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"p{k}"]) for k in range(2)]
    threads = [threading.Thread(target=lambda k=k: ResultCache(path).put_many(
        "llm_clean", [(f"t{k}-{i}", {"value": "v"}) for i in range(300)])) for k in range(2)]
    [t.start() for t in threads]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    [t.join() for t in threads]
    assert dict(ResultCache(path).stats()) == {"llm_classify": 600, "llm_clean": 600}
    assert ResultCache(path).get_many(["p1-299"]) == {"p1-299": {"label": "a", "n": 299}}


def test_cache_cli_counts_and_clears(fake_con):
    fake_con.execute(TEN).fetchall()     # into this test's home, which the CLI reads too
    result = CliRunner().invoke(main, ["cache", "stats"])
    assert "llm_classify" in result.output and "10 results" in result.output
    assert "removed 10 cached results" in CliRunner().invoke(main, ["cache", "clear"]).output
    assert "total                         0 results" in CliRunner().invoke(main, ["cache", "stats"]).output


def test_progress_shows_rate_and_eta_when_on():
    stream = io.StringIO()
    p = Progress("llm_classify", total=100, stream=stream, enabled=True)
    p.started -= 10  # as if 10 s had passed
    p.advance(25)
    p.close()
    assert "llm_classify 25/100 rows" in stream.getvalue() and "rows/s  ETA 0:00:" in stream.getvalue()


def test_progress_is_quiet_off_a_terminal_or_when_off():
    stream = io.StringIO()
    p = Progress("llm_classify", total=100, stream=stream)
    p.started -= 10
    p.advance(25)
    p.close()
    assert stream.getvalue() == ""
    terminal = io.StringIO()
    terminal.isatty = lambda: True
    p = Progress("llm_classify", total=100, stream=terminal, enabled=False)
    p.started -= 10
    p.advance(25)
    assert terminal.getvalue() == ""


def test_clearing_a_read_only_cache_is_a_clear_error(settings, monkeypatch):
    path = settings.result_cache_path         # the one the CLI clears
    ResultCache(path).put_many("llm_classify", [("k", {"label": "a"})])
    # as the cache opens on a read-only disk (root ignores file modes, so open it read-only)
    monkeypatch.setattr(ResultCache, "_db", lambda self: sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True))
    result = CliRunner().invoke(main, ["cache", "clear"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: cannot clear the result cache" in result.output and "fix the file's permissions" in result.output
