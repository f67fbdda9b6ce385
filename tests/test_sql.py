"""The SQL layer on the fake runtime: types, NULLs, arguments, errors, threads."""
import threading

import duckdb
import pytest

import duckllm
from duckllm.engine.stats import STATS
from duckllm.tasks import match


def one(con, sql, *params):
    return con.execute(sql, *params).fetchone()[0]


def test_classify_returns_a_label_from_the_set_with_a_confidence(fake_con):
    r = one(fake_con, "SELECT llm_classify('please refund me', ['delivery', 'refund'])")
    assert r == {"label": "refund", "confidence": pytest.approx(0.9), "note": None, "answered_by": None}
    kinds = fake_con.execute("SELECT typeof(llm_classify('x', ['a']))").fetchone()[0]
    assert kinds == 'STRUCT("label" VARCHAR, confidence DOUBLE, note VARCHAR, answered_by VARCHAR)'


def test_struct_fields_are_usable_in_sql(fake_con):
    fake_con.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('refund now'), ('lost delivery'), ('hi')) v(text)")
    rows = fake_con.execute("""SELECT text, r.label FROM (SELECT text, llm_classify(text, ['refund', 'delivery']) r FROM t)
                               WHERE r.confidence > 0.5 ORDER BY text""").fetchall()
    assert rows == [("lost delivery", "delivery"), ("refund now", "refund")]


def test_null_text_gives_null_and_empty_text_gives_a_reason(fake_con):
    rows = fake_con.execute("SELECT llm_classify(t, ['a']) FROM (VALUES (NULL), (''), ('  ')) v(t)").fetchall()
    assert rows[0][0] is None
    assert rows[1][0] == rows[2][0] == {"label": None, "confidence": None, "note": "empty text",
                                         "answered_by": None}


def test_options_as_struct_or_named_parameters(fake_con, fake_runtime):
    one(fake_con, "SELECT llm_classify('x', ['a', 'b'], {'instructions': 'Pick one.'})")
    one(fake_con, "SELECT llm_classify('y', ['a', 'b'], instructions := 'Pick one.', descriptions := {'a': 'first'})")
    one(fake_con, "SELECT llm_classify('z', ['a', 'b'], descriptions := MAP {'b': 'second'})")
    assert fake_runtime.calls == [["x"], ["y"], ["z"]]


def test_the_options_struct_counts_where_no_named_parameter_is_given(fake_con):
    """The fake answers yes to each label with 0.4: a threshold of 0.3 keeps both labels."""
    call = "SELECT len(llm_classify_multi('x', ['a', 'b'], {})) FROM range(1)"
    assert one(fake_con, call.format("threshold := 0.3")) == 2
    assert one(fake_con, call.format("options := {'threshold': 0.3}")) == 2
    assert one(fake_con, call.format("threshold := 0.5, options := {'threshold': 0.3}")) == 0   # the named one wins
    assert one(fake_con, call.format("options := {'threshold': 0.3, 'model': NULL}")) == 2


def test_labels_may_differ_per_row(fake_con):
    rows = fake_con.execute("""SELECT llm_classify(t, l).label FROM (VALUES ('cat', ['dog', 'cat']),
                               ('red', ['red', 'blue'])) v(t, l)""").fetchall()
    assert rows == [("cat",), ("red",)]


@pytest.mark.parametrize("call, message", [
    ("llm_classify('x', [])", "labels is an empty list"),
    ("llm_classify('x', NULL)", "labels is NULL"),
    ("llm_classify('x', 'refund')", "labels must be a list"),
    ("llm_classify('x', ['a', 'a'])", "'a' appears twice"),
    ("llm_classify('x', ['a'], {'colour': 'red'})", "unknown option 'colour'"),
    ("llm_classify('x', ['a'], model := 'no-such-model')", "duckllm models list"),
    ("llm_clean('x', 42)", "instructions must be text"),
])
def test_bad_arguments_raise_a_clear_error(fake_con, call, message):
    with pytest.raises(duckdb.Error, match=message):
        fake_con.execute(f"SELECT {call}").fetchall()


def test_unknown_named_parameter_is_refused_by_duckdb_with_the_accepted_ones(fake_con):
    with pytest.raises(duckdb.BinderException, match=r"llm_classify\(text, labels, options := NULL"):
        fake_con.execute("SELECT llm_classify('x', ['a'], colour := 'red')")


def test_clean(fake_con):
    r = one(fake_con, "SELECT llm_clean('new  yORK')")
    assert r == {"value": "New York", "confidence": pytest.approx(0.8), "changed": True, "note": None}
    assert one(fake_con, "SELECT llm_clean(NULL)") is None
    assert one(fake_con, "SELECT llm_clean('x', 'dates as ISO 8601', model := 'fake')")["value"] == "X"


def test_register_on_an_existing_connection_keeps_its_data():
    con = duckdb.connect()
    con.execute("CREATE TABLE mine AS SELECT 'refund me' AS t")
    duckllm.register(con, model="fake")
    duckllm.register(con, model="fake")  # twice is fine
    assert one(con, "SELECT llm_classify(t, ['refund']).label FROM mine") == "refund"


def test_the_connection_default_model_is_a_variable(fake_con, fake_runtime):
    fake_con.execute("SET VARIABLE duckllm_model = 'no-such-model'")
    with pytest.raises(duckdb.Error, match="'no-such-model' is not in the catalog"):
        fake_con.execute("SELECT llm_classify('x', ['a'])").fetchall()
    assert one(fake_con, "SELECT llm_classify('x', ['a'], model := 'fake').label") == "a"


def test_macros_are_not_written_into_the_database_file(tmp_path):
    db = str(tmp_path / "x.duckdb")
    duckllm.connect(db, model="fake").close()
    assert duckdb.connect(db).execute("SELECT count(*) FROM duckdb_functions() WHERE function_name LIKE 'llm_%'").fetchone()[0] == 0


def test_many_threads_and_cursors_at_once(fake_con):
    fake_con.execute("CREATE TABLE t AS SELECT 'row ' || i AS text FROM range(5000) r(i)")
    errors, counts = [], []

    def worker():
        try:
            cur = duckllm.register(fake_con.cursor())  # a cursor is a new connection: its own macros
            counts.append(cur.execute("SELECT count(llm_classify(text, ['row']).label) FROM t").fetchone()[0])
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and counts == [5000] * 4


def test_a_pair_written_in_python_is_the_text_sql_hands_llm_match(fake_con, fake_engine):
    """The calibration and the benches write pairs in Python: they must share the SQL calls'
    cached answers, so match.pair writes JSON as DuckDB's to_json does."""
    pairs = [('Sony TV 40"', "Sony  tv"), ("Café \\ x", "a/b"), ("tab\there", "new\nline"),
             ("emoji 😀", "é"), ("ctrl \x01", "x")]
    fake_con.execute("CREATE TABLE p (a VARCHAR, b VARCHAR)")
    fake_con.executemany("INSERT INTO p VALUES (?, ?)", pairs)
    fake_con.execute("SELECT llm_match(a, b) FROM p").fetchall()
    STATS.reset()
    fake_engine.run(match.build(None, {"model": "fake"}), [match.pair(a, b) for a, b in pairs])   # as SQL names it
    assert STATS.snapshot()["cache_hits"] == len(pairs)
