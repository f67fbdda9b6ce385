"""Ctrl-C in the middle of a long `duckllm sql` query: it stops, keeps what it finished, and a
rerun computes only the rest."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL_MODEL

pytestmark = pytest.mark.integration
QUERY = ("SELECT count(llm_classify('ticket ' || i || ': refund please', ['refund', 'delivery']).label) AS n "
         "FROM range(400) t(i)")


def cached_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT count(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


def duckllm_cli(*args, home, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "duckllm.cli", *args], env=dict(os.environ, DUCKLLM_HOME=str(home),
                            DUCKLLM_PROGRESS="0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def test_ctrl_c_cancels_keeps_finished_rows_and_a_rerun_computes_the_rest(home):
    cache = home / "cache.sqlite"
    run = duckllm_cli("sql", "--model", SMALL_MODEL, QUERY, home=home)
    deadline = time.time() + 120
    while cached_rows(cache) < 32 and time.time() < deadline and run.poll() is None:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    sent = time.time()
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130 and time.time() - sent < 30
    assert "Interrupted: the query was cancelled; rows finished so far are kept" in err
    assert "Traceback" not in err and out == ""
    kept = cached_rows(cache)
    assert 32 <= kept < 400

    rerun = duckllm_cli("sql", "--model", SMALL_MODEL, QUERY + "; SELECT cache_hits, model_rows FROM duckllm_stats()",
                        home=home)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    numbers = [int(tok) for line in out.splitlines() for tok in line.replace("│", " ").split() if tok.isdigit()]
    assert numbers[0] == 400                          # every row answered
    assert numbers[1:3] == [kept, 400 - kept]         # cached rows reused, only the rest computed
