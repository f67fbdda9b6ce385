"""llm_calibrate and llm_thresholds: a task's confidence calibrated on labeled rows, the same way
for every function that can be calibrated.

Labeled rows have the shape of `examples`, list({'input': ..., 'output': ...}); the task is built
from the function's own arguments (labels, descriptions, model, ...), so the calibration is
keyed by exactly the task key later calls have. The model answers the rows (raw confidences,
through the result cache), each answer is graded against its output, a map is chosen by
held-out score (calibration.choose) and stored for the task and model (stored.py); every later
call of that task answers with calibrated confidences.

What each function needs is one entry in GRADERS: how a labeled input becomes the function's
text, and how each confidence of its result is graded against the labeled output (llm_extract:
one per field, one map for all fields with an offset per field; llm_classify_multi: each label's
probability of applying against whether it applies, an offset per label). The SQL macros take the union
of the functions' parameters, so they can be generated from the functions' declarations.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from duckllm.confidence import calibration
from duckllm.confidence.stored import (
    WHOLE,
    Calibration,
    answer_key,
    store_at,
)
from duckllm.errors import ArgumentError
from duckllm.tasks import classify, classify_multi, extract, match

FUNCTION = "llm_calibrate"
SHAPE = "a list of STRUCTs such as [{'input': 'refund me', 'output': 'refund'}]"
AUTO = "auto"
REMOVE = "none"      # method := 'none' forgets the task's calibration


@dataclass(frozen=True)
class Grader:
    build: Callable[[dict], object]             # the function's task from its SQL arguments
    text: Callable[[str], str]                  # a labeled input -> the text the task answers
    # (the task's result, the labeled output) -> (confidence, right?, answer) of each of its
    # calibrated confidences; the answer keys offsets by answer (a label, a match, a field)
    grade: Callable[[dict, object], list[tuple[float | None, bool, str]]]


def _classify_grade(result: dict, output) -> list:
    return [(result["confidence"], result["label"] == str(output), answer_key(result["label"]))]


def _match_text(given: str) -> str:
    return match.pair(*match._example_pair(given))


def _match_grade(result: dict, output) -> list:
    gold = match._yes_no(str(output)) == match.ANSWERS[0]
    return [(result["confidence"], bool(result["match"]) == gold, answer_key(result["match"]))]


def _extract_grade(result: dict, output) -> list:
    """Each field the labeled output gives (a STRUCT of field values; NULL: not in the text)."""
    if isinstance(output, str):
        try:
            output = json.loads(output)
        except ValueError:
            output = None
    if not isinstance(output, dict):
        raise ArgumentError(f"{FUNCTION}: an llm_extract row's output must be a STRUCT of the fields' right "
                            f"values such as {{'brand': 'Acme', 'size_gb': 64}}, got {output!r}")
    confidences = result.get("confidence") or {}
    return [(confidences.get(name), _same(result.get(name), gold), name)
            for name, gold in output.items() if name in confidences]


def _same(value, gold) -> bool:
    if value is None or gold is None:
        return value is None and gold is None
    if isinstance(gold, bool) or isinstance(value, bool):
        return str(value).lower() == str(gold).lower()
    try:
        return abs(float(value) - float(gold)) <= 1e-9 * max(1.0, abs(float(gold)))
    except (TypeError, ValueError):
        return " ".join(str(value).lower().split()) == " ".join(str(gold).lower().split())


def _multi_build(arguments: dict):
    """Every label's probability, whatever threshold the call sets (it is not part of the task)."""
    return classify_multi.from_sql({**arguments, "threshold": 0})


def _multi_grade(result: dict, output) -> list:
    """Each label's probability of applying against whether it applies (the output: the labels
    that apply, as a list or comma-separated)."""
    gold = output if isinstance(output, list) else [s.strip() for s in str(output).split(",")]
    gold = {str(label) for label in gold if str(label).strip()}
    unknown = sorted(gold - {x["label"] for x in result["labels"]})
    if unknown:
        raise ArgumentError(f"{FUNCTION}: output names {unknown[0]!r}, which is not one of the labels; a row's "
                            f"output lists the labels that apply, such as ['refund', 'damaged'] (or [] for none)")
    return [(x["confidence"], x["label"] in gold, x["label"]) for x in result["labels"]]


GRADERS = {
    "llm_classify": Grader(classify.from_sql, str, _classify_grade),
    "llm_match": Grader(match.from_sql, _match_text, _match_grade),
    "llm_extract": Grader(extract.from_sql, str, _extract_grade),
    "llm_classify_multi": Grader(_multi_build, str, _multi_grade),
}


def labeled(rows) -> list[tuple[str, object]]:
    """(input, output) pairs; rows with a NULL or blank input or a NULL output are skipped."""
    if isinstance(rows, str):
        rows = json.loads(rows)
    if rows is None:
        raise ArgumentError(f"{FUNCTION}: rows is NULL: the query of labeled rows returned none; pass "
                            f"(SELECT list({{'input': text, 'output': label}}) FROM reviewed) over 50 to 200 rows")
    if not isinstance(rows, list):
        raise ArgumentError(f"{FUNCTION}: rows must be {SHAPE}, got {rows!r}; build them with "
                            f"(SELECT list({{'input': text, 'output': label}}) FROM reviewed)")
    pairs = []
    for row in rows:
        if not isinstance(row, dict) or set(row) != {"input", "output"}:
            raise ArgumentError(f"{FUNCTION}: each row must be a STRUCT(input, output); got {row!r}. "
                                f"rows must be {SHAPE}")
        given, wanted = row["input"], row["output"]
        if given is not None and wanted is not None and str(given).strip():
            pairs.append((str(given), wanted if isinstance(wanted, (dict, list)) else str(wanted)))
    return pairs


def _grader(function) -> Grader:
    if function not in GRADERS:
        raise ArgumentError(f"{FUNCTION}: cannot calibrate {function!r}; it calibrates "
                            f"{', '.join(sorted(GRADERS))} (name the function as text, e.g. 'llm_classify')")
    return GRADERS[function]


def answered(engine, function: str, rows, arguments: dict, use_cache: bool | None = None):
    """(task, confidences, right or wrong, answers) of the labeled rows the model answered, raw."""
    grader = _grader(function)
    task = grader.build(arguments)
    pairs = labeled(rows)
    if function == "llm_classify":
        known = set(classify.validate_labels(arguments.get("labels")))
        unknown = sorted({str(w) for _, w in pairs} - known)
        if unknown:
            raise ArgumentError(f"{FUNCTION}: output {unknown[0]!r} is not one of the labels; each row's output "
                                f"must be the label it should get")
    results = engine.run(task, [grader.text(given) for given, _ in pairs], use_cache=use_cache, calibrated=False)
    graded = [g for r, (_, wanted) in zip(results, pairs) if r is not None for g in grader.grade(r, wanted)
              if isinstance(g[0], (int, float))]
    return task, [g[0] for g in graded], [g[1] for g in graded], [g[2] for g in graded]


def calibrate(engine, function: str, rows, arguments: dict, method: str | None = None,
              use_cache: bool | None = None) -> list[dict]:
    """Fit, store and report: one line per candidate map (the chosen one marked)."""
    method = method or AUTO
    if method not in (AUTO, REMOVE, *calibration.METHODS, calibration.BY_ANSWER):
        raise ArgumentError(f"{FUNCTION}: method must be one of {AUTO}, {', '.join(calibration.METHODS)}, "
                            f"{calibration.BY_ANSWER} or {REMOVE} (forget the calibration), got {method!r}")
    arguments = dict(arguments)
    if method == REMOVE:
        task = _grader(function).build(arguments)
        removed = store_at(engine.cache.path).delete(engine.model(task.model).identity, task.key)
        return [{"function": function, "method": REMOVE, "chosen": removed, "rows": 0, "accuracy": None,
                 "ece_before": None, "ece_after": None, "auroc_before": None, "auroc_after": None,
                 "brier_before": None, "brier_after": None}]
    task, confidences, right, answers = answered(engine, function, rows, arguments, use_cache)
    methods = None if method == AUTO else (method,)
    chosen, report = calibration.choose(confidences, right, methods, answers=answers, what="rows answered")
    store_at(engine.cache.path).put(engine.model(task.model).identity, task.key,
                                    Calibration(function, {WHOLE: chosen}, report.rows, report.to_json()))
    return [{"function": function, "method": s.method, "chosen": s.method == report.chosen, "rows": report.rows,
             "accuracy": report.accuracy, "ece_before": s.ece_before, "ece_after": s.ece_after,
             "auroc_before": s.auroc_before, "auroc_after": s.auroc_after,
             "brier_before": s.brier_before, "brier_after": s.brier_after} for s in report.candidates]


def thresholds(engine, function: str, rows, arguments: dict, precision=None, coverage=None,
               use_cache: bool | None = None) -> list[dict]:
    """Confidence cuts for target precisions and coverages, measured on the labeled rows. With a
    stored calibration, the confidences are the ones it gives each row when fitted on the other
    rows (cross-fitted), so the figures are what new rows can expect."""
    task, confidences, right, answers = answered(engine, function, rows, dict(arguments), use_cache)
    stored = store_at(engine.cache.path).get(engine.model(task.model).identity, task.key) \
        if engine.cache.path.is_file() else None
    calibrated = "raw"
    if stored is not None and WHOLE in stored.maps:
        calibration.check(right, "rows answered")
        calibrated = stored.maps[WHOLE].method
        confidences = list(calibration.held_out(calibrated, confidences, right, answers=answers))
    targets = [(calibration.for_precision, t) for t in _shares("precision", precision)]
    targets += [(calibration.for_coverage, t) for t in _shares("coverage", coverage)]
    if not targets:
        raise ArgumentError(f"{FUNCTION.replace('calibrate', 'thresholds')}: give a target: precision := 0.9 "
                            f"or coverage := 0.8 (or lists of them)")
    lines = []
    for find, target in targets:
        cut = find(confidences, right, target)
        lines.append({"function": function, "target": cut.target, "confidence": calibrated, "cut": cut.cut,
                      "accuracy": cut.accuracy, "coverage": cut.coverage, "rows": len(right)})
    return lines


def _shares(name: str, value) -> list[float]:
    values = [] if value is None else value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ArgumentError(f"llm_thresholds: {name} must be a share from 0 to 1 such as 0.9 (or a list "
                                f"of them), got {v!r}")
    return [float(v) for v in values]
