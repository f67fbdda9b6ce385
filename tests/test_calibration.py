"""Calibration maps, their choice by held-out ECE, and thresholds from a target, on synthetic
answers whose true probability of being right is known."""
import json
import math
import random

import pytest

from duckllm.confidence import calibration, metrics
from duckllm.confidence.calibration import CalibrationError, Map


def overconfident(n: int, seed: int = 1, sharpen: float = 5.0):
    """Answers right with probability q = sigmoid(z), reported as sigmoid(5z): a 0.99 that is
    right about seven times in ten, the shape of a small model's raw confidence."""
    rng = random.Random(seed)
    truth = [rng.uniform(-2.0, 2.0) for _ in range(n)]
    correct = [rng.random() < 1 / (1 + math.exp(-z)) for z in truth]
    return [1 / (1 + math.exp(-sharpen * z)) for z in truth], correct


def skewed(n: int, seed: int = 1):
    """Right with probability q, reported as q ** 0.25: no temperature can undo that (it only
    scales the logit), a bias or a monotone fit can."""
    rng = random.Random(seed)
    truth = [rng.uniform(0.2, 0.98) for _ in range(n)]
    return [q ** 0.25 for q in truth], [rng.random() < q for q in truth]


@pytest.mark.parametrize("method", calibration.METHODS)
def test_each_map_calibrates_an_overconfident_signal(method):
    fit_on, fit_correct = overconfident(400, seed=1)
    test_on, test_correct = overconfident(4000, seed=2)
    raw_ece = metrics.ece(test_on, test_correct)
    mapped = calibration.fit(method, fit_on, fit_correct)(test_on)
    assert raw_ece > 0.2
    assert metrics.ece(mapped, test_correct) < 0.05
    assert all(0 <= p <= 1 for p in mapped)


def test_choose_avoids_a_map_that_cannot_fit_the_shape():
    on, correct = skewed(300)
    test_on, test_correct = skewed(4000, seed=2)
    chosen, _report = calibration.choose(on, correct)
    assert chosen.method != "temperature"
    assert metrics.ece(chosen(test_on), test_correct) < 0.05 < metrics.ece(test_on, test_correct) - 0.15


def test_monotone_maps_keep_the_ranking():
    on, correct = overconfident(300)
    raw = metrics.auroc(on, correct)
    for method in ("temperature", "platt"):
        assert metrics.auroc(calibration.fit(method, on, correct)(on), correct) == pytest.approx(raw)


def test_platt_takes_several_signals():
    rng = random.Random(3)
    truth = [rng.uniform(0.1, 0.95) for _ in range(600)]
    correct = [rng.random() < q for q in truth]
    noisy = [min(0.99, max(0.01, q + rng.gauss(0, 0.25))) for q in truth]       # an uninformative second signal
    both = calibration.fit("platt", [[q ** 0.25, n] for q, n in zip(truth, noisy)], correct)
    assert len(both.params["weights"]) == 2
    assert abs(both.params["weights"][0]) > abs(both.params["weights"][1])


@pytest.mark.parametrize("criterion, of", [("brier", lambda s: s.brier_after), ("ece", lambda s: s.ece_after)])
def test_choose_picks_by_a_held_out_score_and_reports_before_and_after(criterion, of):
    on, correct = overconfident(150)
    chosen, report = calibration.choose(on, correct, criterion=criterion)
    assert report.chosen == chosen.method and report.rows == 150
    assert {s.method for s in report.candidates} == set(calibration.METHODS)
    best = min(of(s) for s in report.candidates)
    assert of(next(s for s in report.candidates if s.method == chosen.method)) == pytest.approx(best, abs=5e-4)
    assert all(s.ece_before > s.ece_after and s.brier_before > s.brier_after for s in report.candidates)
    json.dumps(report.to_json())


def test_offsets_by_answer_fix_a_label_the_model_over_calls():
    """Answer 'spam' is right a quarter of the time whatever its confidence says, 'ham' always:
    one map for both cannot tell them apart, offsets by answer can."""
    rng = random.Random(5)
    answers = [rng.choice(["ham", "spam"]) for _ in range(400)]
    on = [rng.uniform(0.6, 0.95) for _ in answers]
    correct = [a == "ham" or rng.random() < 0.25 for a in answers]
    chosen, _ = calibration.choose(on[:150], correct[:150], answers=answers[:150])
    assert chosen.method == calibration.BY_ANSWER
    mapped = chosen(on[150:], answers[150:])
    assert metrics.auroc(mapped, correct[150:]) > 0.8 and metrics.auroc(on[150:], correct[150:]) < 0.6
    assert metrics.ece(mapped, correct[150:]) < 0.1 < metrics.ece(on[150:], correct[150:])
    assert chosen.one(0.9, "ham") > 0.9 and chosen.one(0.9, "spam") < 0.5
    assert chosen.one(0.9, "unseen") == pytest.approx(float(calibration.fit("platt", on, correct)([0.9])[0]), abs=0.3)


def test_a_map_is_data():
    on, correct = overconfident(200)
    for method in calibration.METHODS:
        m = calibration.fit(method, on, correct)
        again = Map.from_json(json.loads(json.dumps(m.to_json())))
        assert list(again([0.3, 0.7, 0.99])) == pytest.approx(list(m([0.3, 0.7, 0.99])))
    assert Map("platt", {"weights": [1.0], "bias": 0.0}).one(None) is None


@pytest.mark.parametrize("correct, says", [
    ([True] * 12 + [False] * 8, "at least 30 labeled rows, got 20"),
    ([True] * 60, "got 0 wrong"),
    ([False] * 58 + [True] * 2, "got 2 right"),
])
def test_rows_that_cannot_calibrate_say_what_to_add(correct, says):
    with pytest.raises(CalibrationError, match=says) as error:
        calibration.choose([0.9] * len(correct), correct)
    assert "label more rows" in str(error.value) or "add labeled rows" in str(error.value)


def test_an_unknown_method_names_the_ones_there_are():
    with pytest.raises(CalibrationError, match="temperature, platt, isotonic, histogram"):
        calibration.fit("spline", [0.5] * 40, [True, False] * 20)


def test_threshold_for_a_target_precision():
    on, correct = overconfident(2000)
    calibrated = calibration.fit("isotonic", on, correct)(on)
    cut = calibration.for_precision(calibrated, correct, 0.85)
    assert cut.accuracy >= 0.85
    # the lowest such cut: one step lower falls short of the target
    below = sorted({c for c in calibrated if c < cut.cut})
    if below:
        lower = [ok for c, ok in zip(calibrated, correct) if c >= below[-1]]
        assert sum(lower) / len(lower) < 0.85
    assert 0 < cut.coverage < 1


def test_threshold_out_of_reach_abstains_on_every_row():
    cut = calibration.for_precision([0.9, 0.8, 0.7], [False, False, True], 0.99)
    assert cut.coverage == 0 and cut.accuracy is None


def test_threshold_for_a_target_coverage():
    confidences = [i / 100 for i in range(100)]
    correct = [c > 0.3 for c in confidences]
    cut = calibration.for_coverage(confidences, correct, 0.8)
    assert cut.coverage == pytest.approx(0.8) and cut.accuracy == pytest.approx(69 / 80)
    with pytest.raises(CalibrationError, match="from 0 to 1"):
        calibration.for_coverage(confidences, correct, 80)


def test_metrics_moved_to_one_place():
    from duckllm.confidence import auroc
    assert auroc is metrics.auroc
    assert metrics.ece([0.95] * 10, [True] * 9 + [False]) == pytest.approx(0.05)
    assert [b.rows for b in metrics.reliability([0.05, 0.15, 0.15, 1.0], [True] * 4)] == [1, 2, 1]
    assert math.isclose(metrics.accuracy_at([0.9, 0.1], [True, False], 0.5), 1.0)


def test_cross_fitting_scores_each_row_with_a_map_fitted_without_it():
    on, correct = overconfident(200)
    mapped = calibration.cross_fit(on, correct)
    assert len(mapped) == 200 and metrics.ece(mapped, correct) < metrics.ece(on, correct) / 2
    assert calibration.cross_fit(on[:20], correct[:20]) is None      # too few rows: nothing to report
    assert calibration.cross_fit([], []) is None


def test_the_bench_report_shows_confidence_after_calibration():
    from duckllm.evaluation import report
    from duckllm.evaluation.scoring import Result, Scored
    on, correct = overconfident(200)
    line = report.row(Result("d", "llm_classify", "duckllm", 200, 1.0, [Scored(ok, c) for c, ok in zip(on, correct)]))
    assert line["ece_cal"] < line["ece"] / 2 and line["auroc_cal"] > 0.7
    assert 0 < line["coverage_p90"] < 1 and 0 < line["cut_p90"] < 1
    few = report.row(Result("d", "llm_classify", "duckllm", 5, 1.0, [Scored(True, 0.9)] * 5))
    assert few["ece_cal"] is None
