"""Contextual calibration: the content-free prior, measured once per task and model, divided out
where the labels diverge."""
import math

import numpy as np
import pytest

from duckllm.confidence import contextual
from duckllm.errors import ArgumentError
from duckllm.runtime import Pick
from duckllm.runtime.decoders import Output, Picking, trie
from duckllm.tasks import classify

END = 0


class TrieOnly:
    """The one thing Picking asks of its constraints: the options' trie."""
    def __init__(self, paths):
        self.paths = paths

    def trie(self, options, stop, or_end):
        return trie(self.paths), [len(p) - 1 for p in self.paths]


def pick(paths, logits, prior=None):
    picking = Picking(Pick(("a", "b", "c"), score_rest=False, prior=prior), TrieOnly(paths))
    fed = []
    while picking.result is None:
        fed += picking.take(Output(np.asarray(logits[len(fed)], dtype=np.float32)), lambda out: None)
    return picking.result


def test_branches_keep_every_allowed_tokens_log_probability():
    logits = np.zeros(10)
    logits[[5, 9]] = [2.0, 1.0]
    choice = pick([[5, 6, END], [5, 7, END], [9, END]], [logits, logits])
    assert choice.index in (0, 1)
    everything = math.log(np.exp(logits).sum())
    assert choice.branches[0] == pytest.approx({5: 2.0 - everything, 9: 1.0 - everything})
    assert choice.choice_logprob < 0


def test_a_prior_is_divided_out_where_options_diverge():
    logits = np.zeros(10)
    logits[[5, 9]] = [1.0, 0.5]               # the text favours the branch of 'a' and 'b' ...
    prior = (math.log(0.45), math.log(0.45), math.log(0.1))   # ... which content-free text favours more
    assert pick([[5, 6, END], [5, 7, END], [9, END]], [logits, logits]).index != 2
    calibrated = pick([[5, 6, END], [5, 7, END], [9, END]], [logits], prior)
    assert calibrated.index == 2
    # P(c | text) / P(c | content-free), renormalised over the two branches
    odds = {5: math.exp(1.0) / 0.9, 9: math.exp(0.5) / 0.1}
    assert math.exp(calibrated.choice_logprob) == pytest.approx(odds[9] / sum(odds.values()), rel=1e-5)


def test_the_prior_is_measured_once_per_task_and_model(fake_engine_with_runtime):
    engine, runtime = fake_engine_with_runtime
    task = classify.build(["refund", "delivery"], {"contextual": True})
    first = engine.run(task, ["please refund me", "where is it"])
    assert runtime.calls[0] == [t for t in contextual.CONTENT_FREE for _ in ("refund", "delivery")]
    assert [r["label"] for r in first] == ["refund", "refund"]
    engine.run(task, ["my parcel, the delivery"], use_cache=False)
    assert all(c[0] not in contextual.CONTENT_FREE for c in runtime.calls[2:])     # kept, not measured again
    again = classify.build(["refund", "delivery"], {"contextual": True})
    assert again.key == task.key != classify.build(["refund", "delivery"]).key


def test_contextual_calibration_needs_one_prompt_for_every_row():
    with pytest.raises(ArgumentError, match="leave out preselect, or contextual"):
        classify.build(["a", "b", "c"], {"contextual": True, "preselect": 2})
    with pytest.raises(ArgumentError, match="contextual must be true or false"):
        classify.build(["a", "b"], {"contextual": "yes"})


@pytest.fixture
def fake_engine_with_runtime(fake_engine, fake_runtime):
    return fake_engine, fake_runtime


@pytest.mark.integration
def test_contextual_classify_on_the_small_model(small_con):
    rows = small_con.execute("""SELECT llm_classify(t, ['ham', 'spam'], contextual := true) AS r,
                                       llm_classify(t, ['ham', 'spam']) AS plain
                                FROM (VALUES ('WIN a FREE cruise! text YES now'), ('see you at 6?')) v(t)""").fetchall()
    for calibrated, plain in rows:
        assert calibrated["label"] in ("ham", "spam") and 0 < calibrated["confidence"] <= 1
        assert plain["label"] in ("ham", "spam")
