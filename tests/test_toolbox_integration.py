"""The toolbox functions on a real GGUF model (the smallest catalog model): every answer is
inside its declared type, NULLs and blanks are handled, and results come back from the cache."""
import math
import re
from pathlib import Path

import duckdb
import pytest
from test_toolbox import BAD_ARGUMENTS

from duckllm.engine.stats import STATS
from duckllm.prompt_format import FORMATS
from duckllm.runtime import Pick, Say, Write
from duckllm.runtime.llama import LlamaRuntime

pytestmark = pytest.mark.integration
PRODUCTS = Path(__file__).parent / "fixtures" / "products.csv"
TYPES = ["PER", "ORG", "LOC", "MISC"]


@pytest.mark.parametrize("call, message", BAD_ARGUMENTS)
def test_bad_arguments_raise_a_clear_error_before_any_model_work(small_con, call, message):
    with pytest.raises(duckdb.Error, match=message):
        small_con.execute(f"SELECT {call}").fetchall()
    assert STATS.snapshot()["model_rows"] == 0


def confident(c):
    return c is None or 0 <= c <= 1


def test_match_answers_a_boolean_per_pair_and_works_as_a_join_predicate(small_con):
    small_con.execute(f"CREATE TABLE p AS SELECT * FROM read_csv('{PRODUCTS}')")
    rows = small_con.execute("""
        SELECT a.id, b.id, llm_match(a.title, b.title) AS m
        FROM p a JOIN p b ON a.id < b.id AND left(a.title, 1) = left(b.title, 1)""").fetchall()
    assert len(rows) == 0 or all(isinstance(m["match"], bool) and confident(m["confidence"]) for *_, m in rows)
    joined = small_con.execute("""
        SELECT count(*) FROM p a JOIN p b ON a.id < b.id AND llm_match(a.title, b.title).match""").fetchone()[0]
    assert 0 <= joined <= 6


def test_extract_answers_typed_fields(small_con):
    rows = small_con.execute(f"""
        SELECT id, title, llm_extract(title, {{'brand': 'VARCHAR', 'capacity_gb': 'INTEGER',
                                               'wireless': 'BOOLEAN', 'price': 'DOUBLE'}}) AS r
        FROM read_csv('{PRODUCTS}') ORDER BY id""").fetchall()
    for id_, title, r in rows:
        if title is None:
            assert r is None
            continue
        assert r["capacity_gb"] is None or isinstance(r["capacity_gb"], int)
        assert r["wireless"] in (True, False, None) and (r["price"] is None or isinstance(r["price"], float))
        assert all(confident(c) for c in r["confidence"].values())
        assert r["brand"] is None or "\n" not in r["brand"]


def test_entities_are_spans_of_the_text_with_known_types(small_con):
    text = "Angela Merkel visited Microsoft offices in Seattle on Monday."
    found = small_con.execute("SELECT llm_entities(?)", [text]).fetchone()[0]
    for e in found:
        assert e["type"] in TYPES and e["text"] in text and confident(e["confidence"])
    custom = small_con.execute("SELECT llm_entities(?, types := ['PERSON', 'COMPANY'])", [text]).fetchone()[0]
    assert all(e["type"] in ("PERSON", "COMPANY") and e["text"] in text for e in custom)


def test_classify_multi_returns_labels_from_the_set(small_con):
    labels = ["refund", "delivery", "damaged item", "login problem"]
    r = small_con.execute("SELECT llm_classify_multi('The parcel arrived broken, I want my money back', ?)",
                          [labels]).fetchone()[0]
    assert all(x["label"] in labels and 0.5 <= x["confidence"] <= 1 for x in r)
    assert len({x["label"] for x in r}) == len(r)


def test_enrich_answers_within_max_tokens(small_con):
    r = small_con.execute("SELECT llm_enrich('10 Downing Street, London', 'Which country is this in?', "
                          "max_tokens := 3)").fetchone()[0]
    assert isinstance(r["value"], str) and confident(r["confidence"]) and isinstance(r["truncated"], bool)


def test_few_shot_examples_from_a_subquery(small_con):
    small_con.execute("""CREATE TABLE labeled AS SELECT * FROM (VALUES ('refund me now', 'refund'),
        ('where is my parcel', 'delivery'), ('I cannot log in', 'account')) v(text, label)""")
    r = small_con.execute("""SELECT llm_classify('money back please', ['refund', 'delivery', 'account'],
        examples := (SELECT list({'input': text, 'output': label}) FROM labeled))""").fetchone()[0]
    assert r["label"] in ("refund", "delivery", "account")


def test_every_function_reruns_from_the_cache(small_con):
    query = """SELECT llm_match('a b', 'a c'), llm_extract('Acme 5 kg', {'brand': 'VARCHAR', 'kg': 'INTEGER'}),
               llm_entities('Ada Lovelace'), llm_classify_multi('x', ['a', 'b']), llm_enrich('Paris', 'Country?')"""
    first = small_con.execute(query).fetchone()
    computed = STATS.snapshot()["model_rows"]
    assert small_con.execute(query).fetchone() == first
    assert STATS.snapshot()["model_rows"] == computed == 5


def test_abstain_review_and_cascade_macros(small_con, small_model_path):
    labels = "['refund', 'delivery']"
    small_con.execute(f"""CREATE TABLE t AS SELECT text, llm_classify(text, {labels}) AS result
        FROM (VALUES ('refund me'), ('my parcel is late'), ('hello'), ('')) v(text)""")
    results = dict(small_con.execute("SELECT text, result FROM t").fetchall())
    abstained = dict(small_con.execute(f"SELECT text, llm_label_or_null(text, {labels}, 0.5) FROM t").fetchall())
    for text, r in results.items():
        sure = r["confidence"] is not None and r["confidence"] >= 0.5
        assert abstained[text] == (r["label"] if sure else None)
    queue = small_con.execute("SELECT text FROM llm_review_queue('t', 'result', threshold := 0.99)").fetchall()
    expected = sorted((t for t, r in results.items() if r["confidence"] is None or r["confidence"] < 0.99),
                      key=lambda t: (results[t]["confidence"] is not None, results[t]["confidence"] or 0))
    assert [t for (t,) in queue] == expected
    # the 'strong' model here is the same file by path: a second model in the same process
    cascade = small_con.execute(f"""SELECT text, llm_classify_cascade(text, {labels}, 'smollm2-135m',
        '{small_model_path}', below := 0.6) FROM t WHERE text <> ''""").fetchall()
    for text, r in cascade:
        assert r["label"] in ("refund", "delivery")


@pytest.fixture(scope="module")
def runtime(small_model_path):
    return LlamaRuntime(small_model_path, FORMATS["chatml"], n_parallel=4)


def test_written_values_stay_inside_their_kind(runtime):
    prompt = runtime.format.split([("system", "Answer with the number asked for.")])
    texts = ["How many legs has a spider?", "What year did WW2 end?", "Pi to three decimals?"]

    def program(i, n):
        whole = yield Write(8, kind="integer", stop="\n")
        yield Say("decimal:")
        number = yield Write(8, kind="number")
        return whole.text, number.text
    for whole, number in (a.value for a in runtime.run(prompt, texts, program, lambda n: 24)):
        assert re.fullmatch(r"[ 0-9+\-,nul/a]*", whole) and re.fullmatch(r"[ 0-9+\-.,eE%nul/a]*", number)


def test_spans_are_copied_from_their_source(runtime):
    prompt = runtime.format.split([("system", "Name the person in the text.")])
    texts = ["Yesterday Marie Curie won a prize.", "the meeting with john is at noon", "42"]

    def program(i, n):
        return (yield Write(8, kind="span", source=texts[i]))
    for text, answer in zip(texts, runtime.run(prompt, texts, program, lambda n: 10)):
        assert answer.value.text.strip() in text


def test_a_pick_after_said_text_scores_the_whole_option(runtime):
    prompt = runtime.format.split([("system", "Answer yes or no for each line.")])

    def program(i, n):
        yield Say("spam:")
        first = yield Pick((" yes", " no"), stop="\n")
        yield Say("urgent:")
        second = yield Pick((" certainly yes", " certainly not"))
        return first, second
    for answer in runtime.run(prompt, ["WIN A PRIZE NOW", "see you at lunch"], program, lambda n: 16):
        first, second = answer.value
        assert len(first.token_logprobs) == 1 and len(second.token_logprobs) == len(runtime.tokenize(" certainly yes"))
        assert all(lp <= 0 for lp in first.token_logprobs + second.token_logprobs)
        assert 0 < math.exp(second.choice_logprob) <= 1


def test_nearest_examples_and_preselected_labels_by_embedding(small_con):
    labels = ["card_arrival", "card_lost", "refund", "exchange_rate", "password_reset"]
    small_con.execute("""CREATE TABLE shots AS SELECT * FROM (VALUES ('where is my new card', 'card_arrival'),
        ('I lost my card', 'card_lost'), ('give me my money back', 'refund'),
        ('what is the euro rate', 'exchange_rate'), ('forgot my password', 'password_reset')) v(input, output)""")
    rows = small_con.execute("""SELECT llm_classify(t, $labels,
            examples := (SELECT list({'input': input, 'output': output}) FROM shots), nearest := 2),
          llm_classify(t, $labels, preselect := 2)
        FROM (VALUES ('my card has not arrived'), ('reset my password please')) v(t)""",
                             {"labels": labels}).fetchall()
    for with_examples, preselected in rows:
        assert with_examples["label"] in labels and preselected["label"] in labels
    # the two labels most similar to each text: the answer is one of them
    from duckllm.runtime.embed import default_embedder
    embedder = default_embedder()
    top = embedder.nearest(embedder.encode([l.replace("_", " ") for l in labels]),
                           ["my card has not arrived", "reset my password please"], 2)
    for (_, preselected), candidates in zip(rows, top):
        assert preselected["label"] in [labels[i] for i in candidates]


def test_the_python_example_labels_a_file_into_parquet_and_a_plot(small_model_path, tmp_path, capsys):
    import runpy
    examples = Path(__file__).parents[1] / "examples"
    out = tmp_path / "labeled.parquet"
    argv = [str(examples / "tickets.csv"), "--column", "text", "--labels", "refund,delivery,account,card_lost",
            "--out", str(out), "--model", "smollm2-135m"]
    runpy.run_path(str(examples / "label_file.py"), run_name="label_file")["main"](argv)
    rows = duckdb.connect().sql(f"SELECT id, label, confidence FROM '{out}' ORDER BY id").fetchall()
    assert len(rows) == len((examples / "tickets.csv").read_text().splitlines()) - 1 and all(label in ("refund", "delivery", "account", "card_lost", None) for _, label, _ in rows)
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "rows below 0.7 confidence to review" in capsys.readouterr().out
