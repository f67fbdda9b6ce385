from fakes import FakeRuntime

from duckllm.engine import Engine
from duckllm.tasks import classify, clean


def test_nulls_blanks_and_repeats(fake_engine, fake_runtime):
    task = classify.build(["refund", "delivery"])
    texts = ["refund please", None, "   ", "", "where is my delivery", "refund please"]
    results = fake_engine.run(task, texts)
    assert results[1] is None
    assert results[2] == results[3] == classify.DECLARATION.blank
    assert [results[i]["label"] for i in (0, 4, 5)] == ["refund", "delivery", "refund"]
    assert fake_runtime.calls == [["refund please", "where is my delivery"]]  # each text once


def test_clean_reports_whether_it_changed_the_value(fake_engine):
    results = fake_engine.run(clean.build(), ["new  york", "Boston"])
    assert results[0] == {"value": "New York", "confidence": 0.8, "changed": True, "note": None}
    assert results[1]["changed"] is False


def test_the_model_is_loaded_once_lazily(settings, model_on):
    loads = []
    model_on("counted", load=lambda settings: loads.append(settings) or FakeRuntime())
    engine = Engine(settings.replace(model="counted"))
    assert loads == []
    engine.run(classify.build(["a"]), ["x"])
    engine.run(classify.build(["a"]), ["y"])
    assert len(loads) == 1
