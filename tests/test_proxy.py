"""The learned proxy (issue 18): agreement := answers what a classifier trained on the model's own
answers is sure of, and sends the rest to the model. Unit tests on the fake runtime, which picks
the first label a text names (tests/fakes.py): a rule the proxy can learn from n-grams."""
import hashlib
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeRuntime

from duckllm.engine import Engine, cancel, models
from duckllm.engine.cache import ResultCache
from duckllm.engine.stats import STATS
from duckllm.errors import ArgumentError
from duckllm.proxy import bound, cascade, classifier, features, sampling
from duckllm.proxy.examples import Example, ExampleStore
from duckllm.settings import Settings
from duckllm.sql import engine_of
from duckllm.tasks import classify, match

LABELS = ["refund", "delivery", "account", "other"]
WORDS = ["please", "help", "me", "today", "with", "my", "order", "thanks", "the", "a", "of", "card", "phone",
         "app", "login", "money", "box", "parcel", "late", "again", "still", "nothing", "yet", "why", "how",
         "when", "where", "who", "week", "month"]


@pytest.fixture(autouse=True)
def _ngrams_for_embeddings(monkeypatch, request):
    """Unit tests are about the cascade: they give it the n-grams (instant) in place of the
    sentence embedder (a real model, tested with the integration tests)."""
    if "integration" not in request.keywords:
        monkeypatch.setitem(features.FEATURES, "embedding", features.text_features)
        monkeypatch.setitem(features.FEATURES, "text+embedding", features.text_features)


def column(n: int, seed: int = 0, offset: int = 0) -> list[str]:
    """Tickets that name their label (the fake's answer), some none (the fake says 'refund')."""
    rnd = random.Random(seed)
    texts = []
    for i in range(n):
        words = rnd.sample(WORDS, 7)
        label = rnd.choice(LABELS)
        if label != "other" and rnd.random() < 0.9:
            words.insert(rnd.randrange(7), label)
        texts.append(" ".join(words) + f" #{offset + i}")
    return texts


def fake_answer(text: str) -> str:
    return next((label for label in LABELS if label in text), LABELS[0])


def engine(tmp_path, runtime=None, name="cache.sqlite", cache=None) -> Engine:
    """An engine whose fake model runs on runtime, with a result cache of its own (or cache)."""
    runtime = runtime or FakeRuntime()
    models.register("fake", lambda settings: runtime)
    made = Engine(Settings.from_env(model="fake"), cache=cache or ResultCache(tmp_path / name))
    made.runtime()      # its own from now on, whatever 'fake' runs on later
    return made


def agreeing(target=0.9, **options):
    return classify.build(LABELS, {"agreement": target, **options})


def chunks(texts, size):
    return [texts[i:i + size] for i in range(0, len(texts), size)]


def answered(texts, results) -> dict:
    return {t: (r["label"], r["answered_by"], round(r["confidence"], 9)) for t, r in zip(texts, results)}


# ---- honest samples ---------------------------------------------------------------------------

def test_a_row_is_drawn_by_its_text_alone_so_a_sorted_table_is_sampled_as_a_shuffled_one():
    texts = column(4000)
    key = sampling.key_of(0)
    by_label = sorted(texts, key=fake_answer)
    drawn = {t for t in by_label if sampling.draw(key, t) < 0.1}
    assert drawn == {t for t in texts if sampling.draw(key, t) < 0.1}
    share = {label: sum(fake_answer(t) == label for t in drawn) / len(drawn) for label in LABELS}
    column_share = {label: sum(fake_answer(t) == label for t in texts) / len(texts) for label in LABELS}
    assert all(abs(share[label] - column_share[label]) < 0.05 for label in LABELS)
    assert 0.08 < len(drawn) / len(texts) < 0.12
    assert {t for t in texts if sampling.draw(sampling.key_of(1), t) < 0.1} != drawn   # the seed matters


def test_the_model_answers_the_same_sample_of_a_table_sorted_by_label(tmp_path):
    texts = column(1500)
    first_runs = []
    for name, order in (("shuffled", texts), ("sorted", sorted(texts, key=fake_answer))):
        runtime = FakeRuntime()
        engine(tmp_path, runtime, f"{name}.sqlite").run(agreeing(), order)
        first_runs.append(set(runtime.calls[0]))      # the sample goes to the model first
    assert first_runs[0] == first_runs[1]
    assert {fake_answer(t) for t in first_runs[0]} == {fake_answer(t) for t in texts}


# ---- the bound ---------------------------------------------------------------------------------

@pytest.mark.parametrize("agreed, n, alpha, expected", [
    (59, 59, 0.05, 0.05 ** (1 / 59)),     # all agreeing: the bound is alpha ** (1 / n)
    (0, 10, 0.05, 0.0),
    (95, 100, 0.05, 0.8977),              # one-sided at 95%: the beta distribution's 5% quantile
])
def test_clopper_pearson_lower_bound(agreed, n, alpha, expected):
    assert bound.lower(agreed, n, alpha) == pytest.approx(expected, abs=1e-4)
    assert bound.upper(agreed, n, alpha) >= agreed / n >= bound.lower(agreed, n, alpha)


def test_the_fewest_rows_that_can_show_an_agreement():
    assert bound.fewest(0.95, 0.05) == 59
    assert bound.lower(59, 59, 0.05) >= 0.95 > bound.lower(58, 58, 0.05)


def test_no_threshold_when_the_proxy_does_not_agree_often_enough():
    rng = np.random.default_rng(0)
    scores = rng.random(2000)
    assert bound.threshold(scores, rng.random(2000) < 0.8, 0.95, 0.05) is None
    cut = bound.threshold(scores, rng.random(2000) < scores, 0.9, 0.05)   # agreement grows with the score
    assert cut is not None and 0.8 < cut < 0.97


def test_the_agreement_holds_at_the_stated_confidence_over_many_draws():
    """Agreement is P(agree | score) = score: the true agreement above a cut t is (1 + t) / 2.
    Over 400 draws of 600 held-out rows, the chosen cut falls short of the target no more often
    than alpha (5%) allows, with room for the draws' own noise."""
    rng = np.random.default_rng(1)
    short, target = 0, 0.95
    for _ in range(400):
        scores = rng.random(600)
        cut = bound.threshold(scores, rng.random(600) < scores, target, 0.05)
        short += cut is not None and (1 + cut) / 2 < target
    assert short / 400 <= 0.05 + 0.03


# ---- the cascade -------------------------------------------------------------------------------

def test_without_agreement_answers_are_todays(tmp_path):
    texts = column(300)
    plain = engine(tmp_path, name="a.sqlite").run(classify.build(LABELS), texts)
    assert all(r["answered_by"] is None for r in plain)
    assert classify.build(LABELS, {"agreement": 0.95}).key == classify.build(LABELS).key   # same cache


def test_the_proxy_answers_what_it_is_sure_of_and_agrees_with_the_model(tmp_path):
    texts = column(3000)
    results = []
    for part in chunks(texts, 1000):
        results += engine(tmp_path).run(agreeing(0.9), part, query="q")
    by = [r["answered_by"] for r in results]
    proxied = [(r["label"], fake_answer(t)) for t, r in zip(texts, results) if r["answered_by"] == "proxy"]
    assert len(proxied) > 1000
    assert sum(a == b for a, b in proxied) / len(proxied) >= 0.9
    assert all(r["label"] == fake_answer(t) for t, r in zip(texts, results) if r["answered_by"] == "model")
    assert all(0 <= r["confidence"] <= 1 for r in results)
    stats = STATS.snapshot()
    assert (stats["proxy_rows"], stats["model_rows"]) == (by.count("proxy"), by.count("model"))


def test_the_same_query_gives_the_same_answers_whatever_the_chunk_order_and_threads(tmp_path):
    texts = column(3000)
    texts += texts[:40]       # rows repeated in other chunks: one may find the other's answer cached
    parts = list(enumerate(chunks(texts, 610)))
    first = engine(tmp_path, name="one.sqlite")
    in_order = {}
    for i, part in parts:
        in_order[i] = answered(part, first.run(agreeing(0.9), part, query="q"))

    second, threaded = engine(tmp_path, name="two.sqlite"), {}

    def worker(mine):
        for i, part in mine:
            threaded[i] = answered(part, second.run(agreeing(0.9), part, query="q"))
    reversed_parts = parts[::-1]
    threads = [threading.Thread(target=worker, args=(reversed_parts[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert threaded == in_order
    assert {by for part in in_order.values() for _, by, _ in part.values()} == {"model", "proxy"}


def test_each_row_is_counted_once_when_a_chunk_finds_another_chunks_answers_cached(tmp_path):
    texts = column(3000)
    parts = chunks(texts, 1000) + [texts[:500] + column(500, seed=2, offset=9000)]   # a repeat of the first
    STATS.reset()
    made = engine(tmp_path)
    for part in parts:
        made.run(agreeing(0.9), part, query="q")
    stats = STATS.snapshot()
    assert stats["rows"] == sum(map(len, parts))
    assert stats["rows"] == stats["dedup_hits"] + stats["cache_hits"] + stats["model_rows"] + stats["proxy_rows"]


def test_a_later_query_starts_from_the_examples_stored_before(tmp_path):
    eng = engine(tmp_path)
    eng.run(agreeing(0.9), column(1000), query="q1")
    first = STATS.snapshot()["model_rows"]
    STATS.reset()
    results = eng.run(agreeing(0.9), column(1000, seed=1, offset=10_000), query="q2")
    stats = STATS.snapshot()
    assert stats["proxy_rows"] > 800 and stats["model_rows"] < 200       # mostly the audit sample
    assert ExampleStore(eng.cache).count() == first + stats["model_rows"]    # the model's answers only
    assert sum(r["answered_by"] == "proxy" for r in results) == stats["proxy_rows"]


def test_rows_the_proxy_referred_teach_it_but_only_drawn_rows_check_it(tmp_path):
    """The rows the proxy was unsure of are its hardest: they are trained on, but the agreement
    is checked on the rows the sample drew, which are like the rows the proxy answers."""
    texts = column(3000)
    eng = engine(tmp_path)
    for part in chunks(texts, 1000):
        eng.run(agreeing(0.9), part)
    db = eng.cache.connection()
    stored = [(t, bool(d)) for t, d in db.execute("SELECT text, drawn FROM proxy_examples")]
    key = sampling.key_of(0)
    drawn = [t for t, d in stored if d]
    referred = [t for t, d in stored if not d]
    assert drawn and referred
    assert {t for t in texts if sampling.draw(key, t) < cascade.AUDIT} <= set(drawn)   # every call's audit
    assert all(sampling.draw(key, t) >= cascade.AUDIT for t in referred)


def test_the_threshold_is_chosen_on_drawn_rows_alone():
    rng = np.random.default_rng(0)
    texts = column(1200)
    labels = [fake_answer(t) for t in texts]
    hard = rng.random(1200) < 0.3           # rows the model answered otherwise than the text says
    labels = [LABELS[(LABELS.index(label) + 1) % len(LABELS)] if h else label for label, h in zip(labels, hard)]
    X = features.text_features(texts)
    folds = np.array([sampling.fold(sampling.key_of(0), t, classifier.FOLDS) for t in texts])
    fitted = classifier.fit(X, labels, folds, ~hard, 0.9, 0.05)
    assert fitted.held_out == int((~hard).sum())
    scores, agreed = fitted.held_out_scores[~hard], fitted.held_out_agreed[~hard]
    assert fitted.threshold == bound.threshold(scores, agreed, 0.9, 0.05)
    assert classifier.fit(X, labels, folds, np.ones(1200, bool), 0.9, 0.05).threshold != fitted.threshold


def test_a_long_columns_training_is_bounded_and_the_same_rows_train_it_in_any_order(monkeypatch):
    """Each call trains again: past TRAIN_CELLS (rows x labels) the rows of lowest rank train it,
    so a call's cost stops growing with the stored examples; the rest are held out like any."""
    monkeypatch.setattr(classifier, "TRAIN_CELLS", 3 * 300)       # the fake answers 3 labels: 300 rows
    trained = []
    real = classifier._estimator

    class Recording:
        def fit(self, X, y, sample_weight=None):
            trained.append(frozenset(X[i].indices.tobytes() + X[i].data.tobytes() for i in range(X.shape[0])))
            return real().fit(X, y, sample_weight=sample_weight)
    monkeypatch.setattr(classifier, "_estimator", Recording)
    key = sampling.key_of(0)
    texts = column(1200)
    for order in (texts, texts[::-1]):
        X = features.text_features(order)
        folds = np.array([sampling.fold(key, t, classifier.FOLDS) for t in order])
        rank = np.array([sampling.rank(key, t) for t in order])
        fitted = classifier.fit(X, [fake_answer(t) for t in order], folds, np.ones(1200, bool), 0.9, 0.05, rank)
        assert fitted.held_out == 1200 and fitted.threshold is not None
    assert all(len(rows) <= 300 for rows in trained)
    assert sum(map(len, trained[:4])) == 3 * 300 and trained[:4] == trained[4:]   # each row in 3 of 4 folds


def test_an_examples_table_from_before_drawn_and_weight_existed_is_read_as_training_rows(tmp_path, monkeypatch):
    import sqlite3
    cache = ResultCache(tmp_path / "old.sqlite")
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        db.execute("CREATE TABLE proxy_examples (key TEXT PRIMARY KEY, model TEXT NOT NULL, task TEXT NOT NULL, "
                   "text TEXT NOT NULL, label TEXT NOT NULL, created REAL NOT NULL)")
        db.execute("INSERT INTO proxy_examples VALUES ('k1', 'm', 't', 'late parcel', 'delivery', 0)")
    read_only = ResultCache(tmp_path / "old.sqlite")
    monkeypatch.setattr(type(read_only), "writable", property(lambda self: False))
    old = ("k1", "late parcel", "delivery", False, 1.0)       # not drawn, weighing 1
    assert ExampleStore(read_only).rows("m", "t") == [old]
    monkeypatch.undo()
    store = ExampleStore(cache)
    store.add("m", "t", [Example("k2", "my refund", "refund", True, 0.7)])
    assert store.rows("m", "t") == [old, ("k2", "my refund", "refund", True, 0.7)]


def test_each_stored_answer_weighs_the_models_confidence_in_it(tmp_path):
    eng, texts = engine(tmp_path), column(600)
    by_text = dict(zip(texts, eng.run(agreeing(0.9), texts)))
    stored = eng.cache.connection().execute("SELECT text, weight FROM proxy_examples").fetchall()
    assert stored and {by_text[text]["answered_by"] for text, _ in stored} == {"model"}
    assert all(weight == pytest.approx(max(cascade.MIN_WEIGHT, by_text[text]["confidence"])) for text, weight in stored)
    assert len({weight for _, weight in stored}) > 1


def test_the_models_unsure_answers_teach_the_proxy_less():
    """On texts alike, a few sure answers outweigh more unsure ones."""
    texts = [f"my parcel is late, order {i}" for i in range(200)]     # enough for SGD to settle (40 were not)
    labels, weights = ["delivery"] * 50 + ["refund"] * 150, np.array([1.0] * 50 + [0.05] * 150)
    X, new = features.text_features(texts), features.text_features(["my parcel is late, order 999"])
    folds = np.arange(200) % classifier.FOLDS

    def label(w):
        fitted = classifier.fit(X, labels, folds, np.ones(200, bool), 0.9, 0.05, weights=w)
        return fitted.scores(new, np.array([0]))[0][0]
    assert label(weights) == "delivery" and label(None) == "refund"


class CountingEmbedder:
    """Vectors that carry the fake model's answer, and a record of the texts embedded."""

    def __init__(self):
        self.encoded = []

    def encode(self, texts):
        self.encoded += texts
        out = []
        for text in texts:
            v = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)).normal(size=8) * 0.3
            v[LABELS.index(fake_answer(text))] += 1
            out.append(v.astype(np.float32))
        return out


def test_a_new_process_reads_the_examples_vectors_instead_of_embedding_them_again(tmp_path, monkeypatch):
    from duckllm.runtime import embed
    monkeypatch.setitem(features.FEATURES, "text+embedding", features.text_and_embedding_features)
    embedder = CountingEmbedder()
    monkeypatch.setattr(embed, "default_embedder", lambda **kind: embedder)
    monkeypatch.setattr(features, "_embedded", {})
    eng = engine(tmp_path)
    eng.run(agreeing(0.9), column(1500))
    store = ExampleStore(eng.cache)
    examples = [text for (text,) in eng.cache.connection().execute("SELECT text FROM proxy_examples")]
    kept = store.vectors(examples)
    assert len(examples) > 100 and set(kept) == set(examples)
    assert all(np.array_equal(kept[t], features.embedded([t])[t]) for t in examples)   # bit for bit
    monkeypatch.setattr(features, "_embedded", {})       # a new process
    embedder.encoded.clear()
    new = column(500, seed=1, offset=10_000)
    results = engine(tmp_path, cache=eng.cache).run(agreeing(0.9), new)
    assert embedder.encoded and set(embedder.encoded) <= set(new)
    assert any(r["answered_by"] == "proxy" for r in results)
    eng.cache.clear()
    assert store.vectors(examples) == {}


def test_cached_answers_are_answered_by_the_cache_and_teach_the_proxy(tmp_path):
    eng, texts = engine(tmp_path), column(600)
    eng.run(classify.build(LABELS), texts)          # without agreement: cached, no examples kept
    assert ExampleStore(eng.cache).count() == 0
    results = eng.run(agreeing(0.9), texts)
    assert {r["answered_by"] for r in results} == {"cache"}
    assert ExampleStore(eng.cache).count() == 600


# ---- bad input ---------------------------------------------------------------------------------

def test_a_label_set_of_one_needs_no_model(tmp_path):
    runtime = FakeRuntime()
    results = engine(tmp_path, runtime).run(classify.build(["only"], {"agreement": 0.95}), ["a", "b"])
    assert [(r["label"], r["confidence"], r["answered_by"]) for r in results] == [("only", 1.0, "proxy")] * 2
    assert runtime.calls == []


def test_nulls_and_blanks_are_answered_as_without_agreement(tmp_path):
    results = engine(tmp_path).run(agreeing(), [None, "  ", "refund me"])
    assert results[0] is None
    assert results[1] == classify.DECLARATION.blank
    assert results[2]["answered_by"] == "model"


def test_a_column_too_small_for_any_sample_goes_to_the_model_and_says_so(tmp_path):
    texts = column(80)
    results = engine(tmp_path).run(agreeing(0.95), texts)
    assert {r["answered_by"] for r in results} == {"model"}
    assert all("too few for a proxy" in r["note"] for r in results)
    assert [r["label"] for r in results] == [fake_answer(t) for t in texts]


class HashRuntime(FakeRuntime):
    """Answers by a hash of the text: nothing in the text tells the answer."""
    @staticmethod
    def answer(step, text, used):
        choice = FakeRuntime.answer(step, "", used)
        choice.index = hashlib.sha256(text.encode()).digest()[0] % len(step.options)
        return choice


def test_a_proxy_that_cannot_reach_the_target_leaves_every_row_to_the_model(tmp_path):
    eng = engine(tmp_path, HashRuntime())
    results = eng.run(agreeing(0.95), column(1500))
    assert {r["answered_by"] for r in results} == {"model"}
    noted = [r["note"] for r in results if r["note"]]
    assert noted and all("did not show 0.95 agreement at 0.95 confidence" in n for n in noted)
    # none of them chosen by the proxy: all can check it next time
    assert eng.cache.connection().execute("SELECT count(*), sum(drawn) FROM proxy_examples").fetchone() == (1500, 1500)


class StopsAfter(FakeRuntime):
    """Ctrl-C after `rows` finished rows: the next decode step raises Cancelled."""

    def __init__(self, rows):
        super().__init__()
        self.left = rows

    def answered(self, i, answer, on_done):
        if self.left == 0:
            raise cancel.Cancelled("cancelled")
        self.left -= 1
        super().answered(i, answer, on_done)


def test_an_interrupted_query_keeps_the_models_answers_and_the_next_retrains_from_them(tmp_path):
    texts = column(1200)
    eng = engine(tmp_path, StopsAfter(100))
    with pytest.raises(cancel.Cancelled):
        eng.run(agreeing(0.9), texts, query="q1")
    store = ExampleStore(eng.cache)
    assert store.count() == 100 == sum(n for _, n in eng.cache.stats())
    runtime = FakeRuntime()
    again = engine(tmp_path, runtime, cache=eng.cache)
    results = again.run(agreeing(0.9), texts, query="q2")
    assert sum(r["answered_by"] == "cache" for r in results) == 100
    asked = {t for call in runtime.calls for t in call}
    assert not any(t in asked for t, r in zip(texts, results) if r["answered_by"] == "cache")
    assert all(r["label"] == fake_answer(t) for t, r in zip(texts, results) if r["answered_by"] != "proxy")
    assert any(r["answered_by"] == "proxy" for r in results)


def test_clearing_the_cache_clears_the_examples(tmp_path):
    eng = engine(tmp_path)
    eng.run(agreeing(0.9), column(100))       # too few for a proxy: the model answers all
    assert ExampleStore(eng.cache).count() == 100
    eng.cache.clear()
    assert ExampleStore(eng.cache).count() == 0


@pytest.mark.parametrize("options, message", [
    ({"agreement": 1.0}, "agreement must be a number from 0.5 to below 1, such as 0.95, got 1.0"),
    ({"agreement": 0.3}, "agreement must be a number from 0.5 to below 1"),
    ({"agreement": "high"}, "agreement must be a number from 0.5 to below 1"),
    ({"agreement": 0.9, "agreement_confidence": 1}, "agreement_confidence must be a number from 0.5 to below 1"),
    ({"agreement_confidence": 0.9}, "agreement_confidence goes with agreement; pass both"),
])
def test_bad_agreement_options_are_named(options, message):
    with pytest.raises(ArgumentError, match=message):
        classify.build(LABELS, options)
    with pytest.raises(ArgumentError, match=message):
        match.build(None, options)


# ---- llm_match and SQL -------------------------------------------------------------------------

def test_llm_match_with_agreement(tmp_path):
    rnd = random.Random(3)
    pairs = []
    for i in range(1500):
        a = " ".join(rnd.sample(WORDS, 5)) + f" {i}"
        b = a if rnd.random() < 0.4 else " ".join(rnd.sample(WORDS, 5)) + f" {i + 1}"
        pairs.append(match.pair(a + (" yes" if rnd.random() < 0.5 else ""), b))
    results = engine(tmp_path).run(match.build(None, {"agreement": 0.9}), pairs)
    models = engine(tmp_path, name="plain.sqlite").run(match.build(), pairs)
    proxied = [(r["match"], m["match"]) for m, r in zip(models, results) if r["answered_by"] == "proxy"]
    assert len(proxied) > 300
    assert sum(a == b for a, b in proxied) / len(proxied) >= 0.9


def test_sql_agreement_tells_how_each_row_was_answered(fake_con):
    fake_con.execute("CREATE TABLE t AS SELECT unnest(?) AS text", [column(1200)])
    rows = fake_con.execute(f"SELECT r.answered_by, count(*) FROM (SELECT llm_classify(text, {LABELS}, "
                            "agreement := 0.9) AS r FROM t) GROUP BY 1 ORDER BY 1").fetchall()
    assert [by for by, _ in rows] == ["model", "proxy"]
    stats = dict(zip([d[0] for d in fake_con.execute("SELECT * FROM duckllm_stats()").description],
                     fake_con.execute("SELECT * FROM duckllm_stats()").fetchone()))
    assert [n for _, n in rows] == [stats["model_rows"], stats["proxy_rows"]]
    assert fake_con.execute(f"SELECT llm_classify('refund me', {LABELS}).answered_by").fetchone()[0] is None


@pytest.mark.parametrize("threads", [1, 4])
def test_sql_same_answers_whatever_the_thread_schedule(tmp_path, threads):
    """Several threads hand over chunks in an order that changes from run to run; one thread
    hands them over in scan order, and each chunk also learns from those before it."""
    import duckdb

    import duckllm
    answers = []
    for run in range(2):
        con = duckllm.register(duckdb.connect(), model="fake", engine=engine(tmp_path, name=f"{run}.sqlite"))
        con.execute(f"SET threads = {threads}")
        con.execute("CREATE TABLE t AS SELECT unnest(?) AS text", [column(8000)])
        answers.append(con.execute(f"SELECT text, llm_classify(text, {LABELS}, agreement := 0.9) FROM t "
                                   "ORDER BY text").fetchall())
    assert answers[0] == answers[1]


def test_on_one_thread_later_chunks_learn_from_earlier_ones(tmp_path):
    import duckdb

    import duckllm
    shares = {}
    for threads in (1, 4):
        con = duckllm.register(duckdb.connect(), model="fake", engine=engine(tmp_path, name=f"{threads}.sqlite"))
        con.execute(f"SET threads = {threads}")
        con.execute("CREATE TABLE t AS SELECT unnest(?) AS text", [column(8000)])
        shares[threads] = con.execute(f"SELECT avg((llm_classify(text, {LABELS}, agreement := 0.9).answered_by "
                                      "= 'proxy')::INT) FROM t").fetchone()[0]
    assert shares[1] > shares[4] + 0.05


def test_each_query_on_several_threads_is_named_apart(fake_con):
    fake_con.execute("SET threads = 2")
    seen = []
    real = cascade.Cascade.run

    def spy(self, task, todo, keys, cached, deliver, compute, model_id, query=None, **kw):
        seen.append(query)
        return real(self, task, todo, keys, cached, deliver, compute, model_id, query=query, **kw)
    cascade.Cascade.run = spy
    try:
        fake_con.execute(f"SELECT llm_classify('refund me', {LABELS}, agreement := 0.9)").fetchall()
        fake_con.execute(f"SELECT llm_classify('refund you', {LABELS}, agreement := 0.9)").fetchall()
        fake_con.execute("SET threads = 1")     # chunks in scan order: no name needed
        fake_con.execute(f"SELECT llm_classify('refund them', {LABELS}, agreement := 0.9)").fetchall()
    finally:
        cascade.Cascade.run = real
    assert len(seen) == 3 and seen[0] != seen[1] and all(seen[:2]) and seen[2] is None


def test_explain_shows_the_split_the_proxy_took_in_the_tasks_latest_call(fake_con):
    from duckllm.sql import explain
    fake_con.execute("CREATE TABLE first AS SELECT unnest(?) AS text", [column(1500)])
    fake_con.execute("CREATE TABLE later AS SELECT unnest(?) AS text", [column(1000, seed=1, offset=5000)])
    query = f"SELECT llm_classify(text, {LABELS}, agreement := 0.9) FROM later"
    [before] = explain.explain(fake_con, query)
    assert (before.to_compute, before.by_proxy) == (1000, 0)        # no call with agreement yet
    answered = fake_con.execute(f"SELECT llm_classify(text, {LABELS}, agreement := 0.9).answered_by AS by "
                                "FROM first").fetchall()
    share = sum(by == "proxy" for by, in answered) / len(answered)
    assert share > 0.3
    [after] = explain.explain(fake_con, query)
    assert after.by_proxy == round(1000 * share)
    assert after.prompt_tokens < before.prompt_tokens and after.seconds < before.seconds
    assert "by proxy (est.)" in explain.render([after])
    [plain] = explain.explain(fake_con, f"SELECT llm_classify(text, {LABELS}) FROM later")
    assert plain.by_proxy is None and "by proxy" not in explain.render([plain])


def test_explain_says_how_to_let_the_chunks_learn_from_each_other(fake_con):
    from duckllm.sql import explain
    fake_con.execute("CREATE TABLE news AS SELECT unnest(?) AS text", [column(100)])
    query = f"SELECT llm_classify(text, {LABELS}, agreement := 0.9) FROM news"
    fake_con.execute("SET threads = 2")
    hint = "SET threads = 1 lets it learn from the chunks before it"
    assert hint in explain.render(explain.explain(fake_con, query))
    assert hint not in explain.render(explain.explain(fake_con, f"SELECT llm_classify(text, {LABELS}) FROM news"))
    fake_con.execute("SET threads = 1")
    assert hint not in explain.render(explain.explain(fake_con, query))


# ---- the real small model ----------------------------------------------------------------------

@pytest.mark.integration
def test_sql_agreement_on_the_real_model(small_con, tmp_path):
    """Through SQL on the real small model: a column too small for a proxy goes to the model,
    says so and gives the model's own labels; asked again, the cache answers, and the answers
    kept beside it are the proxy's examples, each weighing the model's confidence in it."""
    tickets = f"read_csv('{Path(__file__).parent / 'fixtures' / 'tickets.csv'}')"
    query = f"SELECT id, llm_classify(text, {LABELS}{{}}) AS r FROM {tickets} WHERE text IS NOT NULL ORDER BY id"
    plain = small_con.execute(query.format("")).fetchall()
    small_con.execute("SET VARIABLE duckllm_cache = false")
    agreed = small_con.execute(query.format(", agreement := 0.95")).fetchall()
    assert [r["label"] for _, r in agreed] == [r["label"] for _, r in plain]
    assert all(r["answered_by"] == "model" and "too few for a proxy" in r["note"] for _, r in agreed)
    small_con.execute("SET VARIABLE duckllm_cache = true")
    again = small_con.execute(query.format(", agreement := 0.95")).fetchall()
    assert [(r["label"], r["answered_by"]) for _, r in again] == [(r["label"], "cache") for _, r in plain]
    assert ExampleStore(engine_of(small_con).cache).count() == len(plain)
    weights = [w for w, in engine_of(small_con).cache.connection().execute("SELECT weight FROM proxy_examples")]
    assert sorted(weights) == pytest.approx(sorted(max(cascade.MIN_WEIGHT, r["confidence"]) for _, r in plain))
    one = small_con.execute(f"SELECT llm_classify(text, ['refund'], agreement := 0.9) FROM {tickets} "
                            "WHERE text IS NOT NULL").fetchall()
    assert {(r["label"], r["answered_by"]) for r, in one} == {("refund", "proxy")}


@pytest.mark.integration
def test_sql_match_with_agreement_on_the_real_model(small_con):
    pairs = "(VALUES ('Samsung 970 EVO 1TB', 'Samsung EVO 970 1 TB'), ('Apple iPhone 13', 'Garden hose 20m')) t(a, b)"
    plain = small_con.execute(f"SELECT llm_match(a, b) FROM {pairs}").fetchall()
    small_con.execute("SET VARIABLE duckllm_cache = false")
    agreed = small_con.execute(f"SELECT llm_match(a, b, agreement := 0.9) FROM {pairs}").fetchall()
    assert [r["match"] for r, in agreed] == [r["match"] for r, in plain]
    assert all(r["answered_by"] == "model" and "too few for a proxy" in r["note"] for r, in agreed)


@pytest.mark.integration
def test_a_rows_embedding_is_its_own_whatever_its_neighbours():
    texts = column(40)
    alone = [features.embedding_features([t]).toarray()[0] for t in texts]
    features._embedded.clear()      # computed again, among others, on threads of a pool
    together = features.embedding_features(texts[::-1]).toarray()[::-1]
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_cache_stats_counts_the_examples_and_clear_removes_them(tmp_path):
    from click.testing import CliRunner

    from duckllm.cli.commands import main
    Engine(Settings.from_env(model="fake")).run(agreeing(0.9), column(100))
    stats = CliRunner().invoke(main, ["cache", "stats"]).output
    assert "proxy examples" in stats and "100 answers" in stats
    assert "removed 100 cached results" in CliRunner().invoke(main, ["cache", "clear"]).output
    assert "proxy examples" not in CliRunner().invoke(main, ["cache", "stats"]).output
