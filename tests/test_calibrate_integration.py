"""llm_calibrate on the real small model, through SQL: fit, store, apply, forget."""
import pytest

pytestmark = pytest.mark.integration

LABELS = "['refund', 'delivery']"
# 20 clear rows and 20 vague ones labeled half each way: whatever the model answers, some of its
# answers are right and some wrong, so there is something to calibrate against
REVIEWED = ([(f"I want my money back for order {i}, please refund it", "refund") for i in range(20)]
            + [(f"A question about order {i}", "refund" if i % 2 else "delivery") for i in range(20)])
ROWS = "(SELECT list({'input': msg, 'output': label}) FROM reviewed)"


def test_calibrate_then_every_call_of_the_task_is_calibrated(small_con):
    small_con.execute("CREATE TABLE reviewed(msg VARCHAR, label VARCHAR)")
    small_con.executemany("INSERT INTO reviewed VALUES (?, ?)", REVIEWED)
    raw = small_con.execute(f"SELECT llm_classify('Refund my order 77 now', {LABELS})").fetchall()[0][0]
    assert raw["note"] is None
    report = small_con.sql(f"SELECT * FROM llm_calibrate('llm_classify', {ROWS}, labels := {LABELS})").df()
    assert report["chosen"].sum() == 1 and (report["rows"] == 40).all()
    assert report["brier_after"].min() <= report["brier_before"].iloc[0]
    after = small_con.execute(f"SELECT llm_classify('Refund my order 77 now', {LABELS})").fetchall()[0][0]
    assert after["label"] == raw["label"] and 0 <= after["confidence"] <= 1
    assert after["note"].startswith("confidence calibrated (") and "40 labeled rows" in after["note"]
    cuts = small_con.sql(f"SELECT * FROM llm_thresholds('llm_classify', {ROWS}, labels := {LABELS}, "
                         f"coverage := 0.5)").df()
    assert cuts["confidence"].iloc[0] == report["method"][report["chosen"]].iloc[0]
    small_con.sql(f"SELECT * FROM llm_calibrate('llm_classify', {ROWS}, labels := {LABELS}, method := 'none')").fetchall()
    again = small_con.execute(f"SELECT llm_classify('Refund my order 77 now', {LABELS})").fetchall()[0][0]
    assert again == raw
