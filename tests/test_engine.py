from duckllm.engine import Engine
from duckllm.tasks import classify, clean


def engine_on(runtime):
    return Engine("fake", load=lambda path, fmt: runtime)


def test_nulls_blanks_and_repeats(fake_runtime):
    task = classify.build(["refund", "delivery"])
    texts = ["refund please", None, "   ", "", "where is my delivery", "refund please"]
    results = engine_on(fake_runtime).run(task, texts)
    assert results[1] is None
    assert results[2] == results[3] == {"label": None, "confidence": None, "note": "empty text"}
    assert [results[i]["label"] for i in (0, 4, 5)] == ["refund", "delivery", "refund"]
    assert fake_runtime.calls == [["refund please", "where is my delivery"]]  # each text once


def test_clean_reports_whether_it_changed_the_value(fake_runtime):
    results = engine_on(fake_runtime).run(clean.build(), ["new  york", "Boston"])
    assert results[0] == {"value": "New York", "confidence": 0.8, "changed": True, "note": None}
    assert results[1]["changed"] is False


def test_the_model_is_loaded_once_lazily():
    loads = []
    engine = Engine("fake", load=lambda path, fmt: loads.append(path) or __import__("fakes").FakeRuntime())
    assert loads == []
    engine.run(classify.build(["a"]), ["x"])
    engine.run(classify.build(["a"]), ["y"])
    assert len(loads) == 1
