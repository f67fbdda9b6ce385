import pytest

from duckllm.errors import ArgumentError
from duckllm.tasks import classify, clean, parse_options

LABELS = ["refund", "delivery"]


@pytest.mark.parametrize("labels, message", [
    (None, "labels is NULL; pass a list"),
    ([], "labels is an empty list"),
    ("refund", "labels must be a list"),
    ({"a": 1}, "labels must be a list"),
    (["refund", "refund"], "'refund' appears twice"),
    (["refund", None], "NULL or empty entry"),
    (["refund", "  "], "NULL or empty entry"),
])
def test_bad_labels_name_the_argument_and_the_fix(labels, message):
    with pytest.raises(ArgumentError, match=message):
        classify.build(labels)


@pytest.mark.parametrize("options, message", [
    ({"colour": "red"}, "unknown option 'colour'; the options are agreement, agreement_confidence, confidence, contextual, descriptions"),
    ({"options": {"colour": 1}}, "unknown option 'colour'"),
    ({"options": "fast"}, "options must be a STRUCT"),
    ({"descriptions": ["one"]}, "descriptions has 1 entries for 2 labels"),
    ({"descriptions": {"other": "x"}}, "names 'other', which is not one of the labels"),
    ({"descriptions": 3}, "descriptions must be a STRUCT"),
    ({"confidence": "vibes"}, "confidence must be one of mean_token, choice"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ArgumentError, match=message):
        classify.build(LABELS, options)


def test_named_options_override_the_options_struct():
    assert parse_options("f", {"options": {"model": "a", "instructions": "x"}, "model": "b"},
                         {"model", "instructions"}) == {"model": "b", "instructions": "x"}


def test_descriptions_and_instructions_reach_the_prompt():
    task = classify.build(["ham", "spam"], {"descriptions": {"ham": "a normal message"},
                                           "instructions": "Is this SMS spam?"})
    system = task.messages[0][1]
    assert system.startswith("Is this SMS spam?") and "- ham: a normal message" in system and "- spam\n" in system
    assert classify.build(["ham", "spam"], {"descriptions": ["normal", None]}).messages[0][1].count(":") >= 1


def test_the_task_key_changes_with_everything_that_shapes_the_answer():
    keys = {classify.build(LABELS).key, classify.build(LABELS[::-1]).key,
            classify.build(LABELS, {"instructions": "x"}).key, classify.build(LABELS, {"model": "m"}).key,
            clean.build().key, clean.build("phone numbers as +1 555 0100").key}
    assert len(keys) == 6


def test_from_sql_takes_the_macros_json_arguments():
    task = classify.from_sql({"labels": LABELS, "options": None, "descriptions": None, "model": "m"})
    assert next(task.program("x", 1)).options == tuple(LABELS) and task.model == "m"
    assert clean.from_sql({"instructions": "dates as ISO 8601"}).messages[0][1].endswith("dates as ISO 8601")


def test_clean_rejects_non_text_instructions():
    with pytest.raises(ArgumentError, match="instructions must be text"):
        clean.build(42)
