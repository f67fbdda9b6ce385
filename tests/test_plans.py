"""Plans (`duckllm explain`): planning is a property of a call, never a mode of the shared engine,
and what explain counts is what the model is fed, for every function and option."""
import threading

import duckdb
import pytest
from conftest import SMALL_MODEL
from fakes import FakeRuntime, SharedLetters

import duckllm
from duckllm.sql import engine_of, explain

TEXTS = ["A refund for order 7, please", "My delivery from Acme never arrived", "Please reset my account, Jane"]
LABELS = "['refund', 'delivery', 'account']"
EXAMPLES = ("[{'input': 'where is my parcel', 'output': 'delivery'}, {'input': 'money back now', 'output': 'refund'}, "
            "{'input': 'cannot log in', 'output': 'account'}]")
FED = [   # every function, and each option that changes what a row is fed
    f"llm_classify(t, {LABELS})",
    f"llm_classify(t, {LABELS}, descriptions := {{'refund': 'money back'}}, instructions := 'Sort tickets.')",
    f"llm_classify(t, {LABELS}, examples := {EXAMPLES})",
    f"llm_classify(t, {LABELS}, examples := {EXAMPLES}, nearest := 2)",     # each row its own examples
    f"llm_classify(t, {LABELS}, preselect := 2)",                            # each row its own labels
    f"llm_classify(t, {LABELS}, preselect := 2, examples := {EXAMPLES})",
    f"llm_classify(t, {LABELS}, preselect := 2, examples := {EXAMPLES}, nearest := 1)",
    f"llm_classify(t, {LABELS}, confidence := 'choice')",
    "llm_clean(t)",
    "llm_clean(t, 'Capitalise names.', examples := [{'input': 'jOHN smiht', 'output': 'John Smith'}])",
    "llm_match(t, 'Refund request for order 7')",                           # both records, as the model reads them
    "llm_match(t, 'Order 7', examples := [{'input': '[\"order 7\", \"Order #7\"]', 'output': 'yes'}])",
    "llm_extract(t, {'item': 'VARCHAR', 'order_number': 'INTEGER'})",
    "llm_entities(t)",
    f"llm_classify_multi(t, {LABELS})",
    "llm_enrich(t, 'What does the customer want?', max_tokens := 4)",
]


def with_tickets(con):
    con.execute("CREATE TABLE tickets AS SELECT unnest($t) AS t", {"t": TEXTS})
    con.execute("SET VARIABLE duckllm_cache = false")     # every row is fed, in explain and in the run
    return con


def fed(con, runtime, call) -> tuple[int, int]:
    """(explain's prompt tokens, the tokens the model was then fed: its rows' and the shared prompt once)."""
    query = f"SELECT {call} FROM tickets"
    [estimate] = explain.explain(con, query)
    before = runtime.usage.prompt_tokens
    con.execute(query).fetchall()
    return estimate.prompt_tokens, runtime.usage.prompt_tokens - before + runtime.prefix_tokens


@pytest.mark.parametrize("call", FED)
def test_explain_counts_what_the_model_is_fed(fake_con, fake_runtime, call, monkeypatch):
    monkeypatch.setattr("duckllm.runtime.embed.default_embedder", lambda: SharedLetters())
    counted, fed_ = fed(with_tickets(fake_con), fake_runtime, call)
    assert counted == fed_ and fake_runtime.calls == [fake_runtime.calls[0]] and len(fake_runtime.calls[0]) == 3


@pytest.mark.integration
@pytest.mark.parametrize("call", FED)
def test_explain_counts_exactly_what_the_small_model_is_fed(small_con, call, monkeypatch):
    """The real tokenizer, template and embedder (preselect, nearest): equal to the token."""
    con = with_tickets(small_con)
    con.execute("SET threads = 1")        # one engine call for the three rows, as explain plans them
    runtime = engine_of(con).runtime(SMALL_MODEL)
    monkeypatch.setattr(runtime.scheduler, "prefix_states", None)   # the shared prompt evaluated: not loaded
    runtime.scheduler.prefix = []                                     # ... nor held from an earlier call
    counted, fed_ = fed(con, runtime, call)
    assert counted == fed_


@pytest.mark.integration
def test_explain_counts_no_shared_prompt_where_it_is_held_or_kept_on_disk(small_con, monkeypatch):
    con = with_tickets(small_con)
    runtime = engine_of(con).runtime(SMALL_MODEL)
    con.execute(QUERY).fetchall()              # its shared prompt now held, and kept on disk
    [held] = explain.explain(con, QUERY)
    runtime.scheduler.prefix = []              # as in a new process: on disk only
    [on_disk] = explain.explain(con, QUERY)
    monkeypatch.setattr(runtime.scheduler, "prefix_states", None)
    [evaluated] = explain.explain(con, QUERY)
    assert held.prompt_tokens == on_disk.prompt_tokens < evaluated.prompt_tokens


QUERY = f"SELECT llm_classify(t, {LABELS}).label FROM tickets"


def test_a_query_on_another_connection_is_answered_while_a_plan_is_open(fake_con, fake_engine, fake_runtime):
    con = with_tickets(fake_con)
    other = duckllm.register(con.cursor())                # another connection of the same database
    with fake_engine.planning() as (plan_id, plans):
        probe = duckllm.register(con.cursor())
        probe.execute("SET VARIABLE duckllm_plan = ?", [plan_id])
        assert probe.execute(QUERY).fetchall() == [(None,)] * 3 and fake_runtime.calls == []   # counted
        assert other.execute(QUERY).fetchall() == [("refund",), ("delivery",), ("account",)]     # answered
        assert con.execute(QUERY).fetchall() == [("refund",), ("delivery",), ("account",)]
    [plan] = plans.values()
    assert (plan.rows, len(plan.distinct)) == (3, 3) and fake_runtime.calls == [TEXTS, TEXTS]


class WaitsWhilePlanning(FakeRuntime):
    """Explain's estimate (its speed measurement, done only while planning) waits until the other
    thread's query has been answered."""

    def __init__(self):
        super().__init__()
        self.other_query_done = threading.Event()

    def prompt_speed(self):
        assert self.other_query_done.wait(timeout=30), "the other query was not answered while explain planned"
        return super().prompt_speed()


def test_explain_in_one_thread_leaves_another_threads_query_alone(engine_on):
    runtime = WaitsWhilePlanning()
    con = with_tickets(duckllm.register(duckdb.connect(), engine=engine_on(runtime)))
    estimates = []
    planning = threading.Thread(target=lambda: estimates.extend(explain.explain(con, QUERY)))
    planning.start()
    answers = duckllm.register(con.cursor()).execute(QUERY).fetchall()   # while explain plans
    runtime.other_query_done.set()
    planning.join(timeout=60)
    assert answers == [("refund",), ("delivery",), ("account",)]
    assert [e.distinct for e in estimates] == [3]


def test_a_stale_plan_variable_is_an_error_naming_the_fix(fake_con, fake_runtime):
    fake_con.execute("SET VARIABLE duckllm_plan = 'gone'")
    with pytest.raises(duckdb.Error, match="no plan 'gone' is open.*RESET VARIABLE duckllm_plan"):
        fake_con.execute("SELECT llm_clean('x')").fetchall()
    fake_con.execute("RESET VARIABLE duckllm_plan")
    assert fake_con.execute("SELECT llm_clean('x').value").fetchone() == ("X",)


def test_explain_copies_the_connections_variables_to_its_cursor(fake_con, fake_runtime):
    """The probes see the connection's model, cache choice and the user's own variables."""
    con = with_tickets(fake_con)
    con.execute("SET VARIABLE labels = ['refund', 'other']")
    [e] = explain.explain(con, "SELECT llm_classify(t, getvariable('labels')) FROM tickets")
    assert (e.model, e.distinct, e.cached) == ("fake", 3, 0)
    assert con.execute("SELECT getvariable('duckllm_plan')").fetchone() == (None,)   # never the connection's
