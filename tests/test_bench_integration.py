"""duckllm bench end to end on the smallest real model, with the free-text baseline."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SMALL_MODEL

from duckllm.cli.commands import main

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
    monkeypatch.setattr("duckllm.evaluation.suite.default_suite", lambda: None)
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code != 0 and "pass --suite DIR" in result.output


def test_classify_quality_runs_laducks_method_beside_duckllms(small_model_path):
    """bench/classify_quality.py --laduck: the closest peer's method on the same rows."""
    script = Path(__file__).parents[1] / "bench" / "classify_quality.py"
    done = subprocess.run([sys.executable, str(script), "--suite", str(SUITE), "--models", SMALL_MODEL,
                           "--datasets", "tickets", "--limit", "4", "--laduck"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith(f"| {SMALL_MODEL}")]
    assert [(r[2], r[3]) for r in rows] == [("duckllm", "4"), ("laduck", "4")]
    assert all(0 <= float(r[4]) <= 1 for r in rows)           # accuracy


def random_gguf(*args):
    script = Path(__file__).parents[1] / "bench" / "random_gguf.py"
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)


def test_random_gguf_of_a_real_shape_loads_and_answers_through_sql(small_model_path, tmp_path):
    """bench/random_gguf.py: the production model's shape without its weights (issue 3, on a GPU)."""
    tokenizer, model = tmp_path / "tokenizer.gguf", tmp_path / "tiny.gguf"
    done = random_gguf("--donor", small_model_path, "--tokenizer-only", tokenizer)
    assert done.returncode == 0, done.stderr
    assert tokenizer.stat().st_size < 4e6            # small enough to carry where nothing downloads
    done = random_gguf("--donor", tokenizer, "--shape", "tiny", "--out", model)
    assert done.returncode == 0, done.stderr
    import duckllm
    from duckllm import sql
    con = duckllm.connect(model=str(model))
    r = con.execute("SELECT llm_classify('where is my parcel', ['refund', 'delivery'])").fetchone()[0]
    assert r["label"] in ("refund", "delivery") and 0 < r["confidence"] <= 1
    info = sql.default_engine().runtime(str(model)).describe()
    assert info["layers"] == 2 and info["model"] == "tiny.gguf"


def test_random_gguf_gives_a_template_less_donor_the_llama_3_chat_template(small_model_path, tmp_path):
    """llama.cpp's vocabulary files carry no chat template; the tokenizer-only file can get Llama-3's."""
    import gguf

    from duckllm.prompt_format import detect
    tokenizer = tmp_path / "tokenizer.gguf"
    done = random_gguf("--donor", small_model_path, "--tokenizer-only", tokenizer, "--chat-template", "llama-3")
    assert done.returncode == 0, done.stderr
    template = gguf.GGUFReader(str(tokenizer)).fields["tokenizer.chat_template"].contents()
    assert detect(template).name == "llama3"
    assert "<|end_header_id|>\n\n" in template


def test_the_proxy_bench_replays_a_column_through_the_cascade(user_store, home, tmp_path):
    """bench/proxy.py end to end on the suite's gold labels (no saved answers, no model run): each
    table prints, with the embedder computing the vectors it has not kept (issue 18)."""
    from duckllm.runtime import embed
    folder = embed.model_folder(user_store)          # the user's copy, fetched once, seen by this home
    if not (home / "models" / folder.name).exists():
        (home / "models" / folder.name).symlink_to(folder, target_is_directory=True)
    bench = Path(__file__).parents[1] / "bench"
    run = (f"import sys; sys.path.insert(0, {str(bench)!r}); import proxy_answers, pathlib; "
           f"proxy_answers.OUT = pathlib.Path({str(tmp_path / 'out')!r}); import proxy; proxy.main()")
    done = subprocess.run([sys.executable, "-c", run, "--suite", str(SUITE), "--datasets", "tickets", "--answers",
                           "gold", "--model-rows-per-s", "5", "--seeds", "2", "--targets", "0.9",
                           "--features", "text+embedding,text"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for table in ("(1)", "(2)", "(3)", "(4)", "(5)", "(6)"):
        assert f"\n{table} " in done.stdout
    assert "tickets   0.900   free text+embedding     4" in done.stdout
    assert list((tmp_path / "out" / "embeddings").glob("*/*.npz"))       # vectors kept for the next run
