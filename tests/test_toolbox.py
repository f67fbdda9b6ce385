"""The toolbox functions on the fake runtime: result types, NULLs, argument errors, and each
answer program driven step by step with scripted model answers."""
import math

import duckdb
import pytest
from fakes import FakeRuntime, SharedLetters

from duckllm.errors import ArgumentError
from duckllm.runtime import Answer, Choice, Generation, Say, Write
from duckllm.tasks import classify, classify_multi, entities, extract


def one(con, sql):
    return con.execute(sql).fetchone()[0]


def drive(task, text, replies):
    """Run a task's answer program with scripted replies to its Pick/Write steps; return the
    task's result and the steps it took."""
    program, steps, reply = task.program(text, len(text.split())), [], None
    replies = iter(replies)
    try:
        while True:
            step = program.send(reply)
            steps.append(step)
            reply = None if isinstance(step, Say) else next(replies)
    except StopIteration as stop:
        return task.finish(task.read(Answer(stop.value), text)), steps     # as the engine delivers it


def pick(index, p=0.9):
    return Choice(index, [math.log(p)], math.log(p))


def write(text, p=0.8, ended=False):
    return Generation(text, [math.log(p)], ended=ended)


# ---- SQL types and NULLs -----------------------------------------------------------------------

@pytest.mark.parametrize("call, sql_type", [
    ("llm_match('a', 'b')", 'STRUCT("match" BOOLEAN, confidence DOUBLE, note VARCHAR, answered_by VARCHAR)'),
    ("llm_enrich('a', 'What?')", "STRUCT(\"value\" VARCHAR, confidence DOUBLE, truncated BOOLEAN, note VARCHAR)"),
    ("llm_classify_multi('a', ['x', 'y'])", 'STRUCT("label" VARCHAR, confidence DOUBLE)[]'),
    ("llm_entities('a')", 'STRUCT("text" VARCHAR, "type" VARCHAR, confidence DOUBLE)[]'),
    ("llm_extract('a', {'brand': 'VARCHAR', 'size_gb': 'INTEGER', 'ok': 'BOOLEAN', 'day': 'DATE'})",
     "STRUCT(brand VARCHAR, size_gb INTEGER, ok BOOLEAN, \"day\" DATE, confidence STRUCT(brand DOUBLE, "
     "size_gb DOUBLE, ok DOUBLE, \"day\" DOUBLE), note VARCHAR)"),
])
def test_each_function_returns_its_declared_type(fake_con, call, sql_type):
    assert one(fake_con, f"SELECT typeof({call})") == sql_type


def test_extract_fills_typed_fields(fake_con):
    r = one(fake_con, "SELECT llm_extract('acme drive 512', {'brand': 'VARCHAR', 'size_gb': 'INTEGER'})")
    assert r["brand"] == "Acme Drive 512" and r["size_gb"] == 512
    assert r["confidence"] == {"brand": pytest.approx(0.8), "size_gb": pytest.approx(0.6)} and r["note"] is None


def test_null_inputs_give_null_and_blank_inputs_a_reason(fake_con):
    assert fake_con.execute("SELECT llm_match(NULL, 'b'), llm_match('a', NULL), llm_entities(NULL), "
                            "llm_classify_multi(NULL, ['x']), llm_enrich(NULL, 'Why?')").fetchone() == (None,) * 5
    assert one(fake_con, "SELECT llm_match('  ', 'b')") == {"match": None, "confidence": None, "note": "empty record",
                                                              "answered_by": None}
    assert one(fake_con, "SELECT llm_extract('', {'a': 'VARCHAR'})") == {
        "a": None, "confidence": None, "note": "empty text"}


def test_a_pair_is_one_input_for_dedup_and_the_cache(fake_con, fake_runtime):
    fake_con.execute("SELECT llm_match(a, b) FROM (VALUES ('x', 'y'), ('x', 'y'), ('y', 'x')) v(a, b)").fetchall()
    assert fake_runtime.calls == [["Record A: x\nRecord B: y", "Record A: y\nRecord B: x"]]


BAD_ARGUMENTS = [
    ("llm_extract('x', {'a': 'BLOB'})", "field 'a' has type 'BLOB'; the types are VARCHAR"),
    ("llm_extract('x', {'confidence': 'DOUBLE'})", "may not be named 'confidence'"),
    ("llm_extract('x', 'brand')", "schema must be a STRUCT"),
    ("llm_entities('x', types := [])", "types is an empty list"),
    ("llm_entities('x', max_entities := 0)", "max_entities must be an integer from 1 to 64"),
    ("llm_classify_multi('x', ['a', 'a'])", "'a' appears twice"),
    ("llm_classify_multi('x', ['a'], threshold := 2)", "threshold must be a number from 0 to 1"),
    ("llm_enrich('x', '')", "question must be a non-empty text"),
    ("llm_enrich('x', 'Why?', max_tokens := 0)", "max_tokens must be an integer from 1 to 1024"),
    ("llm_match('x', 'y', 42)", "instructions must be text"),
    ("llm_classify('x', ['a', 'b'], examples := [{'input': 'q', 'output': 'c'}])", "not one of the labels"),
    ("llm_classify('x', ['a', 'b'], examples := ['q'])", "STRUCT\\(input, output\\)"),
    ("llm_classify('x', ['a', 'b'], nearest := 2)", "nearest picks from the examples"),
    ("llm_classify('x', ['a', 'b'], preselect := -1)", "preselect must be a positive integer"),
    ("llm_match('x', 'y', examples := [{'input': 'one record', 'output': 'yes'}])", "must hold both records"),
]


@pytest.mark.parametrize("call, message", BAD_ARGUMENTS)
def test_bad_arguments_raise_a_clear_error(fake_con, call, message):
    with pytest.raises(duckdb.Error, match=message):
        fake_con.execute(f"SELECT {call}").fetchall()


# ---- answer programs ---------------------------------------------------------------------------

def test_extract_says_each_field_then_decodes_its_value_within_its_type():
    task = extract.build({"brand": "VARCHAR", "size_gb": "INTEGER", "ssd": "BOOLEAN", "since": "DATE"})
    result, steps = drive(task, "Acme 512GB SSD", [write(" Acme"), write(" 512"), pick(0), write(" 2024-13-01")])
    assert [s.text for s in steps if isinstance(s, Say)] == ["brand:", "size_gb:", "ssd:", "since:"]
    assert [s.kind for s in steps if isinstance(s, Write)] == ["text", "integer", "text"]
    assert [s.or_end for s in steps if isinstance(s, Write)] == [False, False, True]   # only the last may end
    assert (result["brand"], result["size_gb"], result["ssd"], result["since"]) == ("Acme", 512, True, None)
    assert result["note"] == "since: could not read '2024-13-01' as DATE"


def test_extract_reads_null_as_a_missing_value():
    result, _ = drive(extract.build({"colour": "VARCHAR", "n": "INTEGER"}), "x", [write(" null"), write(" null")])
    assert result["colour"] is None and result["n"] is None and result["note"] is None


def test_entities_end_on_none_on_the_end_token_or_on_a_repeat():
    task = entities.build(["PER", "ORG", "LOC", "MISC"])
    result, steps = drive(task, "x", [pick(4)])                       # 'none'
    assert result == {"entities": []} and steps[0].options[-1] == "none"
    result, steps = drive(task, "Ada met Bob", [pick(0), write(" Ada"), pick(0), write(" Bob", ended=True)])
    assert [(e["text"], e["type"]) for e in result["entities"]] == [("Ada", "PER"), ("Bob", "PER")]
    assert all(s.source == "Ada met Bob" for s in steps if isinstance(s, Write))   # spans come from the text
    result, _ = drive(task, "Ada", [pick(0), write(" Ada"), pick(3), write(" Ada")])
    assert [e["text"] for e in result["entities"]] == ["Ada"]


def test_classify_multi_keeps_the_labels_likely_to_apply():
    task = classify_multi.build(["refund", "delivery", "login"])
    result, steps = drive(task, "x", [pick(0, 0.9), pick(1, 0.8), pick(0, 0.6)])
    assert [s.text for s in steps if isinstance(s, Say)] == ["refund:", "delivery:", "login:"]
    assert [(r["label"], round(r["confidence"], 2)) for r in result["labels"]] == [("refund", 0.9), ("login", 0.6)]
    strict = classify_multi.build(["refund", "delivery", "login"], {"threshold": 0.7})
    assert [r["label"] for r in drive(strict, "x", [pick(0, 0.9), pick(1, 0.8), pick(0, 0.6)])[0]["labels"]] == ["refund"]


def test_examples_become_earlier_turns_of_the_shared_prompt():
    task = classify.build(["a", "b"], {"examples": [{"input": "first", "output": "b"}, {"input": None, "output": "a"}]})
    assert task.messages[1:] == (("user", "first"), ("assistant", "b"))   # incomplete examples are skipped


def test_nearest_examples_are_chat_turns_of_each_row(monkeypatch, fake_engine, fake_runtime):
    monkeypatch.setattr("duckllm.runtime.embed.default_embedder", lambda: SharedLetters())
    shots = [{"input": "xyz", "output": "b"}, {"input": "tac", "output": "a"}, {"input": "tic", "output": "a"}]
    task = classify.build(["a", "b"], {"examples": shots, "nearest": 1})
    assert task.messages == task.messages[:1]                    # no example in the shared prompt
    assert task.row_turns("tick") == [("user", "tac"), ("assistant", "a")]
    seen = []
    fake_runtime.run = lambda *a, row_prefixes=None, **kw: seen.append(row_prefixes) or FakeRuntime.run(
        fake_runtime, *a, **kw)
    fake_engine.run(task, ["tick", "zzz"])
    assert [[str(p) for p in prefixes] for prefixes in seen] == [["<|im_start|>user\ntac<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n<|im_start|>user\n",
                     "<|im_start|>user\nxyz<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\n"]]


def test_preselected_labels_are_listed_with_each_row(monkeypatch):
    monkeypatch.setattr("duckllm.runtime.embed.default_embedder", lambda: SharedLetters())
    task = classify.build(["cat", "dog", "emu"], {"preselect": 2})
    assert "- cat" not in task.messages[0][1]
    assert task.render("tic") == "Labels:\n- cat\n\nText: tic"
    result, steps = drive(task, "tic", [pick(0)])
    assert steps[0].options == ("cat",) and result["label"] == "cat"


def test_label_sets_above_the_threshold_are_preselected_by_default(monkeypatch):
    monkeypatch.setattr("duckllm.runtime.embed.default_embedder", lambda: pytest.fail("no embedding below the threshold"))
    classify.build([f"l{i}" for i in range(classify.PRESELECT_ABOVE)])
    with pytest.raises(ArgumentError):   # above it, the (absent) embedder is asked for
        monkeypatch.setattr("duckllm.runtime.embed.default_embedder", lambda: (_ for _ in ()).throw(ArgumentError("asked")))
        classify.build([f"l{i}" for i in range(classify.PRESELECT_ABOVE + 1)])


# ---- patterns: cascade and blocked joins evaluate the model only where needed -----------------

@pytest.fixture
def two_model_con(model_on):
    """A connection whose models 'small' (its default) and 'strong' are two fake runtimes."""
    import duckllm
    runtimes = {name: FakeRuntime() for name in ("small", "strong")}
    for name, runtime in runtimes.items():
        model_on(name, runtime)
    return duckllm.connect(model="small"), runtimes


def test_the_cascade_sends_only_unsure_rows_to_the_strong_model(two_model_con):
    con, runtimes = two_model_con
    rows = con.execute("""SELECT text, llm_classify_cascade(text, ['refund', 'delivery'], 'small', 'strong',
        below := 0.5).label FROM (VALUES ('refund me'), ('hello'), ('delivery late'), ('xyz')) v(text)
        ORDER BY text""").fetchall()
    assert [label for _, label in rows] == ["delivery", "refund", "refund", "refund"]
    assert runtimes["small"].calls == [["refund me", "hello", "delivery late", "xyz"]]   # once: then cached
    assert runtimes["strong"].calls == [["hello", "xyz"]]      # the fake is 0.4 sure where no label is named


def test_a_blocked_join_scores_only_the_pairs_sharing_the_key(two_model_con):
    con, runtimes = two_model_con
    con.execute("CREATE TABLE a AS SELECT * FROM (VALUES (1, 'x', 'acme'), (2, 'y', 'zeta')) v(id, title, brand)")
    con.execute("CREATE TABLE b AS SELECT * FROM (VALUES (1, 'x2', 'acme'), (2, 'y2', 'beta'), (3, 'z', 'acme')) v(id, title, brand)")
    con.execute("SELECT a.id, b.id FROM a JOIN b ON a.brand = b.brand AND llm_match(a.title, b.title).match").fetchall()
    assert runtimes["small"].calls == [["Record A: x\nRecord B: x2", "Record A: x\nRecord B: z"]]
