"""llm_calibrate and llm_thresholds from SQL: fit on labeled rows, store, apply to later calls."""
import pytest

from duckllm.confidence import stored

LABELS = "['refund', 'delivery']"
# The fake runtime picks the first label named in the text (confidence 0.9), else the first label
# (0.4): rows naming 'refund' are right 2 times in 3, the others 1 time in 3.
REVIEWED = ([(f"please refund order {i}", "refund") for i in range(20)]
            + [(f"refund? no, where is parcel {i}", "delivery") for i in range(10)]
            + [(f"hello {i}", "delivery") for i in range(20)] + [(f"hi {i}", "refund") for i in range(10)])
ROWS = "(SELECT list({'input': msg, 'output': label}) FROM reviewed)"


def with_reviewed(con):
    con.execute("CREATE TABLE reviewed(msg VARCHAR, label VARCHAR)")
    con.executemany("INSERT INTO reviewed VALUES (?, ?)", REVIEWED)
    return con


@pytest.fixture
def reviewed(fake_con):
    return with_reviewed(fake_con)


def calibrate(con, *extra):
    return con.sql(f"SELECT * FROM llm_calibrate('llm_classify', {ROWS}, labels := {LABELS}{''.join(extra)})")


def test_calibrate_reports_every_candidate_and_later_calls_are_calibrated(reviewed):
    before = reviewed.execute(f"SELECT llm_classify('refund me', {LABELS})").fetchall()[0][0]
    assert before == {"label": "refund", "confidence": 0.9, "note": None, "answered_by": None}
    report = calibrate(reviewed).df()
    assert set(report["method"]) == {"temperature", "platt", "isotonic", "histogram", "by_answer"}
    assert report["chosen"].sum() == 1 and (report["rows"] == 60).all()
    assert report["accuracy"].iloc[0] == pytest.approx(0.5)
    assert (report["brier_after"] <= report["brier_before"] + 0.05).all()
    after = reviewed.execute(f"SELECT llm_classify('refund me', {LABELS})").fetchall()[0][0]
    assert after["label"] == "refund"
    assert after["confidence"] == pytest.approx(2 / 3, abs=0.08)       # 0.9 was right 2 times in 3
    assert after["note"].startswith("confidence calibrated (") and "60 labeled rows" in after["note"]


def test_a_calibration_belongs_to_its_task(reviewed):
    calibrate(reviewed).fetchall()
    other = reviewed.execute(f"SELECT llm_classify('refund me', {LABELS}, descriptions := {{'refund': 'money back'}})"
                             ).fetchall()[0][0]
    assert other == {"label": "refund", "confidence": 0.9, "note": None, "answered_by": None}


def test_a_calibration_survives_the_process_and_is_forgotten_on_request(reviewed, settings):
    import duckdb

    import duckllm
    from duckllm.engine import Engine
    calibrate(reviewed, ", method := 'isotonic'").fetchall()
    # another engine on the same home, as another process would open it
    fresh = with_reviewed(duckllm.register(duckdb.connect(), engine=Engine(settings)))
    assert "isotonic" in fresh.execute(f"SELECT llm_classify('refund me', {LABELS})").fetchall()[0][0]["note"]
    forgot = calibrate(fresh, ", method := 'none'").fetchall()
    assert [(r[1], r[2]) for r in forgot] == [("none", True)]
    assert fresh.execute(f"SELECT llm_classify('refund me', {LABELS})").fetchall()[0][0]["note"] is None


def test_match_is_calibrated_the_same_way(fake_con):
    # the fake answers Yes only when 'yes' appears in the pair's text
    pairs = ([(f'["yes {i}", "a"]', "yes") for i in range(15)] + [(f'["yes {i}", "b"]', "no") for i in range(15)]
             + [(f"x {i}\ny", "no") for i in range(25)] + [(f"z {i}\nw", "yes") for i in range(5)])
    fake_con.execute("CREATE TABLE pairs(p VARCHAR, gold VARCHAR)")
    fake_con.executemany("INSERT INTO pairs VALUES (?, ?)", pairs)
    report = fake_con.sql("SELECT * FROM llm_calibrate('llm_match', (SELECT list({'input': p, 'output': gold}) "
                          "FROM pairs))").df()
    assert report["chosen"].sum() == 1 and report["rows"].iloc[0] == 60
    result = fake_con.execute("SELECT llm_match('yes one', 'yes two')").fetchall()[0][0]
    assert result["match"] is True and result["confidence"] == pytest.approx(0.5, abs=0.1)
    assert result["note"].startswith("confidence calibrated")


def test_thresholds_from_targets(reviewed):
    raw = reviewed.sql(f"SELECT * FROM llm_thresholds('llm_classify', {ROWS}, labels := {LABELS}, "
                       f"precision := [0.6, 0.99], coverage := 0.5)").df()
    assert list(raw["target"]) == ["precision 0.6", "precision 0.99", "coverage 0.5"]
    assert (raw["confidence"] == "raw").all()
    assert raw["cut"].iloc[0] == pytest.approx(0.9) and raw["accuracy"].iloc[0] == pytest.approx(2 / 3)
    assert raw["coverage"].iloc[1] == 0 and raw["accuracy"].isna().iloc[1]       # out of reach: abstain on all
    assert raw["coverage"].iloc[2] == pytest.approx(0.5)
    calibrate(reviewed).fetchall()
    cal = reviewed.sql(f"SELECT * FROM llm_thresholds('llm_classify', {ROWS}, labels := {LABELS}, "
                       f"coverage := 0.5)").df()
    assert cal["confidence"].iloc[0] != "raw"


@pytest.mark.parametrize("call, says", [
    ("llm_calibrate('llm_clean', {rows})", "cannot calibrate 'llm_clean'; it calibrates llm_classify, llm_classify_multi, llm_extract, llm_match"),
    ("llm_calibrate('llm_classify', {rows}, labels := ['refund'])", "output 'delivery' is not one of the labels"),
    ("llm_calibrate('llm_classify', {rows}, labels := {labels}, method := 'magic')", "method must be one of auto"),
    (("llm_calibrate('llm_classify', (SELECT list({{'input': msg, 'output': label}}) FROM reviewed LIMIT 0), "
     "labels := {labels})"), "rows is NULL: the query of labeled rows returned none"),
    (("llm_calibrate('llm_classify', (SELECT list({{'input': msg, 'output': label}}) FROM (FROM reviewed LIMIT 20)), "
     "labels := {labels})"), "at least 30 labeled rows answered, got 20"),
    (("llm_calibrate('llm_classify', (SELECT list({{'input': msg, 'output': 'refund'}}) FROM reviewed "
     "WHERE msg LIKE '%refund%'), labels := {labels})"), "got 0 wrong"),
    ("llm_thresholds('llm_classify', {rows}, labels := {labels})", "give a target: precision := 0.9"),
    ("llm_thresholds('llm_classify', {rows}, labels := {labels}, precision := 90)", "share from 0 to 1"),
])
def test_what_cannot_be_calibrated_says_what_to_do(reviewed, call, says):
    import duckdb
    with pytest.raises(duckdb.Error, match=says):
        reviewed.sql("SELECT * FROM " + call.format(rows=ROWS, labels=LABELS)).fetchall()


def test_results_without_a_confidence_pass_through():
    calibration = stored.Calibration("llm_classify", {stored.WHOLE: stored.Map("platt", {"weights": [1.0], "bias": -1.0})}, 40)
    assert calibration.apply({"label": None, "confidence": None, "note": "empty text"})["note"] == "empty text"
    applied = calibration.apply({"label": "a", "confidence": 0.5, "note": "text truncated"})
    assert applied["note"] == "text truncated; confidence calibrated (platt, 40 labeled rows)"


def test_extract_is_calibrated_per_field(fake_con):
    # the fake writes the text's first number for an INTEGER field: right where the label agrees
    fake_con.execute("CREATE TABLE products(t VARCHAR, n INTEGER)")
    fake_con.executemany("INSERT INTO products VALUES (?, ?)",
                         [(f"pack of {i}", i) for i in range(30)] + [(f"pack of {i}", i + 1) for i in range(30)])
    report = fake_con.sql("SELECT * FROM llm_calibrate('llm_extract', (SELECT list({'input': t, 'output': {'n': n}}) "
                          "FROM products), schema := {'n': 'INTEGER'})").df()
    assert report["rows"].iloc[0] == 60 and report["accuracy"].iloc[0] == pytest.approx(0.5)
    result = fake_con.execute("SELECT llm_extract('pack of 7', {'n': 'INTEGER'})").fetchall()[0][0]
    assert result["n"] == 7 and result["confidence"]["n"] == pytest.approx(0.5, abs=0.1)
    assert result["note"].startswith("confidence calibrated")
    with pytest.raises(Exception, match="output must be a STRUCT of the fields' right values"):
        fake_con.sql("SELECT * FROM llm_calibrate('llm_extract', (SELECT list({'input': t, 'output': 'x'}) "
                     "FROM products), schema := {'n': 'INTEGER'})").fetchall()


def test_classify_multi_is_calibrated_per_label_and_the_threshold_applies_after(fake_con):
    # the fake answers ' yes' for every label (0.9) when the text says yes, else 0.4
    fake_con.execute("CREATE TABLE tickets(t VARCHAR, applies VARCHAR[])")
    fake_con.executemany("INSERT INTO tickets VALUES (?, ?)",
                         [(f"yes, refund order {i}", ["refund"]) for i in range(30)]
                         + [(f"order {i}", ["refund"] if i % 2 else ["delivery"]) for i in range(30)])
    rows = "(SELECT list({'input': t, 'output': applies}) FROM tickets)"
    call = "SELECT llm_classify_multi('yes, refund order 99', ['refund', 'delivery'], threshold := {})"
    assert [x["label"] for x in fake_con.execute(call.format(0.5)).fetchall()[0][0]] == ["refund", "delivery"]
    report = fake_con.sql(f"SELECT * FROM llm_calibrate('llm_classify_multi', {rows}, "
                          f"labels := ['refund', 'delivery'], threshold := 0.5)").df()
    assert report["rows"].iloc[0] == 120          # 60 rows x 2 labels
    assert report["method"][report["chosen"]].iloc[0] == "by_answer"
    probability = {x["label"]: x["confidence"] for x in fake_con.execute(call.format(0)).fetchall()[0][0]}
    assert probability["refund"] > 0.7 and probability["delivery"] < 0.3      # offsets by label
    # the threshold applies to the calibrated probability, whatever threshold the fit was called with
    assert [x["label"] for x in fake_con.execute(call.format(0.5)).fetchall()[0][0]] == ["refund"]
    with pytest.raises(Exception, match="output names 'billing', which is not one of the labels"):
        fake_con.sql("SELECT * FROM llm_calibrate('llm_classify_multi', [{'input': 'x', 'output': ['billing']}], "
                     "labels := ['refund', 'delivery'])").fetchall()


def test_the_macros_take_every_parameter_of_the_functions_they_calibrate():
    import re

    import duckllm.dbt
    from duckllm.sql import calibrate as sql_calibrate
    from duckllm.tasks.declare import AGREEMENT
    from duckllm.tasks.functions import DECLARATIONS
    calibrated = [f for f in DECLARATIONS if f.name in ("llm_classify", "llm_match", "llm_extract",
                                                        "llm_classify_multi")]
    asked = {p.name for f in calibrated for p in f.params if not p.row and p not in AGREEMENT}
    assert asked == set(sql_calibrate.parameters())
    dbt = (duckllm.dbt.package_path() / "macros" / "calibration.sql").read_text()
    for name, _, own, _ in sql_calibrate.MACROS:
        declared = re.search(rf"macro {name.removeprefix('llm_')}\((.*?)\)", dbt, re.DOTALL).group(1)
        given = {p.split("=")[0].strip() for p in declared.split(",")} - {"function", "rows"}
        assert given == set(sql_calibrate.parameters()) | set(own), name      # the dbt macro has drifted
