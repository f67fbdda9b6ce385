"""Every user-facing function on a real GGUF model (the smallest catalog model)."""
import re
import threading
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from conftest import SMALL_MODEL

import duckllm
from duckllm.cli.commands import main
from duckllm.confidence import mean_token_prob
from duckllm.prompt_format import FORMATS
from duckllm.runtime.llama import LlamaRuntime
from duckllm.tasks import classify

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).parent / "fixtures"
LABELS = ["refund", "delivery", "account", "card_lost"]


def test_classify_answers_inside_the_label_set(small_con):
    rows = small_con.execute(f"""
        SELECT id, text, llm_classify(text, {LABELS}) AS r
        FROM read_csv('{FIXTURES / "tickets.csv"}') ORDER BY id""").fetchall()
    assert len(rows) == 6
    for id_, text, r in rows:
        if text is None:
            assert r is None
            continue
        assert r["label"] in LABELS and 0 < r["confidence"] <= 1 and r["note"] is None


def test_descriptions_and_both_confidence_methods(small_con):
    r1 = small_con.execute("""SELECT llm_classify('WIN a FREE cruise! text YES now', ['ham', 'spam'],
        descriptions := {'ham': 'a normal personal message', 'spam': 'advertising or a scam'})""").fetchone()[0]
    r2 = small_con.execute("""SELECT llm_classify('WIN a FREE cruise! text YES now', ['ham', 'spam'],
        descriptions := {'ham': 'a normal personal message', 'spam': 'advertising or a scam'},
        confidence := 'choice')""").fetchone()[0]
    assert r1["label"] == r2["label"] and r1["confidence"] != r2["confidence"]


@pytest.fixture(scope="module")
def runtimes(small_model_path):
    return LlamaRuntime(small_model_path, FORMATS["chatml"], n_parallel=1), \
        LlamaRuntime(small_model_path, FORMATS["chatml"], n_parallel=8)


def test_every_token_of_the_chosen_label_is_scored(runtimes):
    runtime = runtimes[1]
    labels = ["card_lost", "card_arrival", "card_payment_fee_charged"]
    task = classify.build(labels)
    prompt = runtime.format.split(list(task.messages))
    texts = ["my card never came in the post", "someone stole my card", "why was I charged a card fee"]
    for choice in runtime.choose(prompt, texts, labels):
        label_tokens = runtime.tokenize(labels[choice.index])
        assert len(choice.token_logprobs) == len(label_tokens)
        assert all(lp <= 0 for lp in choice.token_logprobs)


@pytest.mark.parametrize("labels", [
    ["yes", "no", "Yes", "No"],
    ["The answer is: no", "The answer is: yes", "yes", "no"],   # a long shared prefix, then a branch
])
def test_constrained_decoding_agrees_with_free_decoding_when_that_lands_on_a_label(runtimes, labels):
    runtime = runtimes[1]
    task = classify.build(labels)
    prompt = runtime.format.split(list(task.messages))
    texts = ["win a free prize now", "see you at lunch", "I ordered a burger", "my card never came",
             "I love this, great!", "terrible, awful", "the football match", "the election"]
    free = runtime.generate(prompt, texts, 8)
    chosen = runtime.choose(prompt, texts, labels)
    landed = [(f, c) for f, c in zip(free, chosen) if f.text in labels]
    assert landed, "the model never answered with a label; pick other texts"
    for f, c in landed:
        assert labels[c.index] == f.text
        assert c.token_logprobs == pytest.approx(f.token_logprobs, abs=1e-3)


def test_sizes_default_by_device(small_model_path):
    """Context, batch and rows in flight come from the device's defaults (a GPU's are larger)."""
    from duckllm.runtime.llama import DEFAULTS
    runtime = LlamaRuntime(small_model_path)
    expected = DEFAULTS[runtime.describe()["device"]]
    assert (runtime.n_ctx, runtime.n_batch, runtime.n_parallel) == (expected["n_ctx"], expected["n_batch"],
                                                                     expected["n_parallel"])
    runtime.close()


def test_switching_prompts_reuses_only_the_shared_start_of_the_prefix(small_model_path):
    def answers(runtime, labels, options=None):
        task = classify.build(labels, options)
        prompt = runtime.format.split(list(task.messages))
        return [(c.index, c.token_logprobs) for c in runtime.choose(prompt, ["refund me", "where is my parcel"], labels)]
    alone = answers(LlamaRuntime(small_model_path, FORMATS["chatml"], n_parallel=8), LABELS)
    runtime = LlamaRuntime(small_model_path, FORMATS["chatml"], n_parallel=8)
    answers(runtime, LABELS, {"instructions": "Sort the tickets."})   # a prefix sharing only the start
    answers(runtime, LABELS[:2])                                        # a shorter one
    assert answers(runtime, LABELS) == alone


def test_a_prefix_that_is_the_start_of_the_one_held_needs_nothing_evaluated(runtimes):
    from duckllm.prompt_format import Prompt, Text
    runtime = runtimes[1]
    ask = lambda shared: runtime.choose(Prompt(Text.content(shared), "\nAnswer: "), ["is the sky blue?"], ["yes", "no"])[0]
    longer = ask("Question one two three: ")
    assert ask("Question one two") is not None            # nothing new to evaluate for the prefix
    assert ask("Question one two three: ").token_logprobs == longer.token_logprobs


def test_prompt_speed_after_the_prefix_leaves_the_rows_answers_alone(runtimes):
    runtime = runtimes[1]
    task = classify.build(LABELS)
    prompt = runtime.format.split(list(task.messages))
    before = runtime.choose(prompt, ["where is my parcel"], LABELS)
    assert runtime.prefix_tokens > 50
    assert runtime.prompt_speed(16, after_prefix=True) > 0 and runtime.prompt_speed(16) > 0
    after = runtime.choose(prompt, ["where is my parcel"], LABELS)
    assert after[0].token_logprobs == before[0].token_logprobs     # the scratch cells are gone


def test_choice_confidence_needs_no_scoring_of_the_determined_rest(runtimes):
    runtime = runtimes[1]
    labels = ["card_payment_fee_charged", "refund_not_showing_up"]
    task = classify.build(labels)
    prompt = runtime.format.split(list(task.messages))
    texts = ["why was I charged a fee", "my refund is missing"]
    full = runtime.choose(prompt, texts, labels)
    before = runtime.usage.generated_tokens
    short = runtime.choose(prompt, texts, labels, score_rest=False)
    assert runtime.usage.generated_tokens == before   # determined at the first token: nothing fed
    for a, b in zip(full, short):
        assert a.index == b.index and a.choice_logprob == pytest.approx(b.choice_logprob, abs=1e-4)
        assert len(b.token_logprobs) == 1 < len(a.token_logprobs)


def _one_then_many(one, many, labels, texts):
    task = classify.build(labels)
    prompt = one.format.split(list(task.messages))
    return one.choose(prompt, texts, labels), many.choose(prompt, texts, labels)


def test_batched_rows_match_one_row_at_a_time(runtimes):
    texts = [line.split(",", 1)[1] for line in (FIXTURES / "tickets.csv").read_text().splitlines()[1:]]
    texts = [f"{t} ({i})" for i in range(8) for t in texts if t]   # 40 rows: more than one epoch of 16
    a, b = _one_then_many(*runtimes, LABELS, texts)
    assert [c.index for c in a] == [c.index for c in b]
    for x, y in zip(a, b):     # bit for bit here; issue 3 asks for 1e-3
        assert x.token_logprobs == pytest.approx(y.token_logprobs, abs=1e-4)
        assert mean_token_prob(x.token_logprobs) == pytest.approx(mean_token_prob(y.token_logprobs), abs=1e-3)


def test_batched_rows_match_one_row_at_a_time_on_the_default_model(user_store):
    """The default model's K-quants take another matrix kernel in small batches (CPU_MIN_BATCH)."""
    try:
        path = user_store.resolve(fetch=False)
    except Exception:
        pytest.skip("the default model is not downloaded (the README's first command fetches it)")
    one, many = LlamaRuntime(path, n_parallel=1), LlamaRuntime(path, n_parallel=4)
    texts = ["refund me now", "where is my parcel", "I lost my card", "change my address", "card gone",
             "the courier never came"]
    a, b = _one_then_many(one, many, LABELS, texts)
    assert [c.index for c in a] == [c.index for c in b]
    for x, y in zip(a, b):
        assert mean_token_prob(x.token_logprobs) == pytest.approx(mean_token_prob(y.token_logprobs), abs=1e-3)


def test_a_row_decoded_alone_checks_guesses_and_answers_the_same(runtimes, monkeypatch):
    from duckllm.runtime import decoders
    from duckllm.tasks import extract
    runtime = runtimes[1]
    task = extract.build({"name": "VARCHAR", "city": "VARCHAR"})
    text = "Order 4411 from Jonathan Appleseed, 221B Baker Street, London, shipped by DHL Express."
    prompt = runtime.format.split(list(task.messages))
    decodes = []
    real = runtime.context.decode
    monkeypatch.setattr(runtime.context, "decode", lambda batch: (decodes.append(1), real(batch))[1])

    def answer():
        decodes.clear()
        value = runtime.run(prompt, [task.render(text)], lambda i, n: task.program(text, n), task.answer_tokens)[0].value
        return value, len(decodes)
    guessed, with_guesses = answer()
    monkeypatch.setattr(decoders, "guesses", lambda prompt, written, limit: [])
    plain, without = answer()
    assert with_guesses < without           # the guesses copied from the text were kept
    assert guessed.keys() == plain.keys()
    for field in plain:
        assert guessed[field][0] == plain[field][0]
        assert guessed[field][1] == pytest.approx(plain[field][1], abs=1e-6)


def test_an_interrupted_call_leaves_the_model_usable(runtimes):
    runtime = runtimes[1]
    task = classify.build(LABELS)
    prompt = runtime.format.split(list(task.messages))
    texts = [f"ticket {i}: my card is lost" for i in range(40)]
    done = []

    def stop_after_ten(i, answer):
        done.append(i)
        if len(done) == 10:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        runtime.run(prompt, texts, task.program, task.answer_tokens, on_done=stop_after_ten)
    again = runtime.choose(prompt, texts, LABELS)   # no cells were left behind
    assert len(again) == 40 and all(c is not None for c in again)


def test_text_longer_than_the_context_is_truncated_and_flagged(small_con):
    small_con.execute("CREATE TABLE t AS SELECT * FROM (VALUES (1, repeat('my parcel is late. ', 6000)), (2, 'refund me')) v(i, text)")
    rows = small_con.execute(f"SELECT i, llm_classify(text, {LABELS}) FROM t ORDER BY i").fetchall()
    assert rows[0][1]["label"] in LABELS and "truncated" in rows[0][1]["note"]
    assert rows[1][1]["label"] in LABELS and rows[1][1]["note"] is None
    clean = small_con.execute("SELECT llm_clean(text) FROM t WHERE i = 1").fetchone()[0]
    assert clean["value"] is not None and "truncated" in clean["note"]


def test_clean(small_con):
    rows = small_con.execute("""SELECT t, llm_clean(t) FROM (VALUES ('teh  quick brwon fox'), ('Boston'),
                                (NULL), ('  ')) v(t)""").fetchall()
    for text, r in rows[:2]:
        assert isinstance(r["value"], str) and 0 < r["confidence"] <= 1
        assert r["changed"] == (r["value"] != text)
    assert rows[2][1] is None and rows[3][1]["note"] == "empty text"
    with_instructions = small_con.execute("SELECT llm_clean('5551234567', 'format US phone numbers as (555) 123-4567')").fetchone()[0]
    assert isinstance(with_instructions["value"], str)


def test_copy_to_parquet_on_several_threads_does_not_crash(small_con, tmp_path):
    small_con.execute("SET threads = 4")
    small_con.execute("CREATE TABLE many AS SELECT 'ticket ' || (i % 40) || ': my card is lost' AS text FROM range(3000) r(i)")
    out = tmp_path / "labels.parquet"
    small_con.execute(f"COPY (SELECT text, llm_classify(text, {LABELS}) AS r FROM many) TO '{out}'")
    [(n, labels)] = small_con.execute(f"SELECT count(*), count(DISTINCT r.label) FROM '{out}'").fetchall()
    assert n == 3000 and labels >= 1


def test_cursors_on_threads_share_the_model(small_con):
    errors, results = [], []

    def worker(i):
        try:
            cur = duckllm.register(small_con.cursor(), model=SMALL_MODEL)
            results.append(cur.execute(f"SELECT llm_classify('ticket {i}: refund me', {LABELS}).label").fetchone()[0])
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(results) == 4 and set(results) <= set(LABELS)


def test_stats_and_a_cached_rerun_on_the_real_model(small_con):
    small_con.execute("CREATE TABLE r AS SELECT 'ticket ' || (i % 5) || ': where is my parcel' AS text FROM range(50) t(i)")
    query = f"SELECT list(llm_classify(text, {LABELS}).label ORDER BY text) FROM r"
    first = small_con.execute(query).fetchone()[0]
    s = dict(zip([d[0] for d in small_con.execute("SELECT * FROM duckllm_stats()").description],
                 small_con.execute("SELECT * FROM duckllm_stats()").fetchone()))
    assert (s["rows"], s["model_rows"], s["dedup_hits"], s["device"]) == (50, 5, 45, "cpu")
    assert s["prompt_tokens"] > 5 * 5 and s["generated_tokens"] >= 0 and s["seconds"] > 0
    assert small_con.execute(query).fetchone()[0] == first
    cache_hits, model_rows = small_con.execute("SELECT cache_hits, model_rows FROM duckllm_stats()").fetchone()
    assert (cache_hits, model_rows) == (5, 5)


def test_register_on_an_existing_connection():
    con = duckdb.connect()
    con.execute("CREATE TABLE notes AS SELECT 'the delivery is late' AS t")
    duckllm.register(con, model=SMALL_MODEL)
    assert con.execute(f"SELECT llm_classify(t, {LABELS}).label FROM notes").fetchone()[0] in LABELS


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not a model at all", "not a GGUF"),
    (b"GGUF" + b"\x00" * 64, "could not load"),
])
def test_a_missing_or_corrupt_model_file_is_a_clear_error(small_con, tmp_path, content, message):
    path = tmp_path / "broken.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(duckdb.Error, match=message):
        small_con.execute(f"SELECT llm_classify('x', ['a'], model := '{path}')").fetchall()
    assert small_con.execute(f"SELECT llm_classify('refund me', {LABELS}).label").fetchone()[0] in LABELS


def test_cli_sql_prints_a_table(small_model_path):
    result = CliRunner().invoke(main, ["sql", "--model", SMALL_MODEL,
                                       f"SELECT llm_classify('refund me', {LABELS}).label AS label"])
    assert result.exit_code == 0, result.output
    assert re.search(r"│\s+label\s+│", result.output) and any(l in result.output for l in LABELS)


def test_cli_sql_errors_are_one_clean_line(small_model_path):
    result = CliRunner().invoke(main, ["sql", "--model", SMALL_MODEL, "SELECT llm_classify('x', [])"])
    assert result.exit_code == 1
    assert result.output.strip().endswith("labels is an empty list; pass at least one, such as ['refund', 'delivery']")


def test_cli_models_path_prints_the_file_last(small_model_path):
    result = CliRunner().invoke(main, ["models", "path", SMALL_MODEL])
    # the test's own home links the user's model file in
    assert result.exit_code == 0 and Path(result.output.strip().splitlines()[-1]).resolve() == small_model_path.resolve()


def test_cli_info_names_the_device(small_model_path):
    result = CliRunner().invoke(main, ["info", "--model", SMALL_MODEL])
    assert result.exit_code == 0 and re.search(r"device: (cpu|gpu)", result.output)
    assert "gpu_layers_offloaded:" in result.output
    assert "batch_tokens: 8 to 512 (batch-invariant)" in result.output    # the CPU's rule (CPU_MIN_BATCH)
    assert "kv_cache: bf16" in result.output


def test_shell_runs_multi_line_statements_and_dot_commands(small_model_path):
    script = "CREATE TABLE t AS SELECT 'refund me' AS text;\nSELECT llm_classify(text,\n  " + \
             str(LABELS) + ").label AS label\nFROM t;\n.tables\nSELECT llm_classify('x', NULL);\n.quit\n"
    result = CliRunner().invoke(main, ["shell", "--model", SMALL_MODEL], input=script)
    assert result.exit_code == 0, result.output
    assert "label" in result.output and "│ t " in result.output.replace("│ t  ", "│ t ")
    assert "Error: llm_classify: labels is NULL" in result.output


def test_explain_counts_and_then_sees_the_cached_rows(small_model_path, tmp_path):
    query = (f"SELECT id, llm_classify(text, {LABELS}) AS r FROM read_csv('{FIXTURES / 'tickets.csv'}') "
             f"WHERE id > 1")
    db = str(tmp_path / "t.duckdb")
    before = CliRunner().invoke(main, ["explain", "--model", SMALL_MODEL, "--db", db, query])
    assert before.exit_code == 0, before.output
    header, _, row, total, *speeds = before.output.splitlines()
    assert header.split()[:4] == ["call", "rows", "distinct", "cached"]
    rows, distinct, cached, to_compute, tokens = [int(v.replace(",", "")) for v in row.split()[-7:-2]]
    assert (rows, distinct, cached, to_compute) == (4, 4, 0, 4) and tokens > 4 * 8   # 8+ tokens a text
    assert total.startswith(f"total: {distinct} inputs to compute") and speeds[0].startswith("speed: smollm2-135m: ")
    assert CliRunner().invoke(main, ["sql", "--model", SMALL_MODEL, "--db", db, query]).exit_code == 0
    after = CliRunner().invoke(main, ["explain", "--model", SMALL_MODEL, "--db", db, query]).output.splitlines()
    assert [int(v) for v in after[2].split()[-7:-2]] == [rows, distinct, distinct, 0, 0]
