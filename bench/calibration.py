"""Confidence you can act on, measured: raw confidence signals, calibration maps, thresholds.

    python bench/calibration.py run --limit 200          # the model answers; saved per row
    python bench/calibration.py signals                  # AUROC of each raw signal
    python bench/calibration.py calibrate                # calibration from <= 100 labeled rows
    python bench/calibration.py contextual               # label-free (contextual) calibration

`run` sends a fixed-seed sample of each dataset (the library's loaders and seed) through
duckllm's real functions on the default model, recording per row the gold answer, the answer and
every Pick's raw result (duckllm.runtime.Choice: token log-probabilities, the restricted choice
probability, and each decision's allowed branches), into bench/out/calibration/<model>/ as JSON
lines, so the other commands re-use them without running the model. A run resumes where it
stopped. Reads the suite at run time (--suite, default ../shared/data); copies none of its rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

from duckllm import confidence
from duckllm.confidence import calibration, metrics
from duckllm.engine import Engine
from duckllm.evaluation import datasets
from duckllm.evaluation.kinds import SLOTS
from duckllm.evaluation.scoring import MISSING
from duckllm.runtime import Answer, Choice, Pick
from duckllm.settings import Settings
from duckllm.tasks import classify, classify_multi, match

ROOT = Path(__file__).resolve().parent
DEFAULT_SUITE = datasets.default_suite() or ROOT.parents[1] / "shared" / "data"
OUT = ROOT / "out" / "calibration"
CLASSIFY = ("sms_spam", "ag_news", "banking77", "symptom2disease")
MATCH = ("dblp_acm", "abt_buy")
MULTI = ("restaurant8k",)
CONTENT_FREE = ("N/A", " ", "[MASK]")   # Zhao et al. 2021: the empty one as a space (a row needs a token)
CHUNK = 64                              # rows per engine call: a stop loses at most these


# ---- recording the raw signals of duckllm's real functions -------------------------------------

def recording(task):
    """The task, answering as before, with every Pick's Choice kept beside its fields (also
    when the engine gives it a contextual prior)."""
    def recorded(inner):
        def program(text, n_tokens):
            steps, picks, reply = inner(text, n_tokens), [], None
            try:
                while True:
                    step = steps.send(reply)
                    reply = yield step
                    if isinstance(step, Pick):
                        picks.append(reply)
            except StopIteration as stop:
                return stop.value, picks
        return program

    def read(answer, text):
        value, picks = answer.value
        return {**task.read(Answer(value, answer.truncated), text), "picks": [_choice(c) for c in picks],
                "truncated": answer.truncated}
    prior = task.contextual and dataclasses.replace(
        task.contextual, program=lambda p: recorded(task.contextual.program(p)))
    return dataclasses.replace(task, program=recorded(task.program), read=read, contextual=prior or None)


def _choice(c: Choice) -> dict:
    return {"index": c.index, "token_logprobs": c.token_logprobs, "choice_logprob": c.choice_logprob,
            "branches": [sorted(b.items(), key=lambda kv: -kv[1]) for b in c.branches]}


def items(suite_dir: Path, name: str, limit: int) -> tuple[list[dict], dict]:
    """(rows as {id, text, gold}, what the task is built from) for a dataset."""
    dataset = datasets.Dataset.open(suite_dir, name)
    groups = datasets.sample_ids(dataset.rows(), limit)
    if name in CLASSIFY:
        labels, desc = dataset.labels, dataset.descriptions or None
        return ([{"id": g[0]["id"], "text": g[0]["text"], "gold": g[0]["label"]} for g in groups],
                {"labels": labels, "descriptions": desc})
    if name in MATCH:
        return ([{"id": g[0]["id"], "text": match.pair(g[0]["left"], g[0]["right"]),
                  "gold": g[0]["label"] == "match"} for g in groups], {})
    gold = [{r["attribute"]: r["value"] != MISSING for r in g} for g in groups]
    return ([{"id": g[0]["id"], "text": g[0]["text"], "gold": [gl[s] for s in SLOTS]}
             for g, gl in zip(groups, gold)], {"labels": list(SLOTS), "descriptions": SLOTS})


def task_of(name: str, built: dict, contextual: bool = False):
    if name in CLASSIFY:
        return classify.build(built["labels"], {"descriptions": built["descriptions"],
                                                "contextual": True if contextual else None})
    if name in MATCH:
        return match.build()
    return classify_multi.build(built["labels"], {"descriptions": built["descriptions"], "threshold": 0})


def predicted(name: str, fields: dict):
    if name in CLASSIFY:
        return fields["label"]
    if name in MATCH:
        return fields["match"]
    return [p["index"] == 0 for p in fields["picks"]]     # each label: ' yes' is option 0


def run(args) -> None:
    """--contextual: the same rows again (the first --limit of those saved) with contextual
    calibration decoded (llm_classify contextual := true), saved as <dataset>.contextual.jsonl."""
    out = folder_of(args.model)
    out.mkdir(parents=True, exist_ok=True)
    # the model measured, not the cache; contextual priors kept in a file of the bench's own
    engine = Engine(Settings.from_env(model=args.model, progress=False).with_cache(out / "priors.sqlite"))
    runtime = engine.runtime()
    for name in args.datasets.split(","):
        if args.contextual:
            saved = [json.loads(line)["id"] for line in (out / f"{name}.jsonl").open()][:args.limit]
            rows, built = items(args.suite, name, json.loads((out / f"{name}.meta.json").read_text())["limit"])
            rows = [r for r in rows if r["id"] in set(saved)]
        else:
            rows, built = items(args.suite, name, args.limit)
        task = recording(task_of(name, built, args.contextual))
        path = out / f"{name}{'.contextual' if args.contextual else ''}.jsonl"
        done = {json.loads(line)["id"] for line in path.open()} if path.exists() else set()
        todo = [r for r in rows if r["id"] not in done]
        meta = {"dataset": name, "task_key": task.key, **built, "limit": args.limit,
                "label_tokens": {l: runtime.tokenize(l) for l in built.get("labels") or ()},
                "model": engine.model().identity}
        if not args.contextual:
            (out / f"{name}.meta.json").write_text(json.dumps(meta))
        if name in CLASSIFY and not (out / f"{name}.content_free.json").exists():
            (out / f"{name}.content_free.json").write_text(json.dumps(content_free(runtime, task)))
        print(f"{name}: {len(done)} rows saved, {len(todo)} to run", file=sys.stderr)
        started = time.perf_counter()
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            answers = engine.run(task, [r["text"] for r in chunk], use_cache=False)
            with path.open("a") as f:
                for r, a in zip(chunk, answers):
                    f.write(json.dumps({"id": r["id"], "gold": r["gold"], "predicted": predicted(name, a),
                                        "truncated": a["truncated"], "picks": a["picks"]}) + "\n")
            n = start + len(chunk)
            print(f"  {n}/{len(todo)} rows, {n / (time.perf_counter() - started):.2f} rows/s", file=sys.stderr)


def content_free(runtime, task) -> list[dict]:
    """The task's answers to content-free inputs, as the engine would ask (the engine answers a
    blank text without the model, so the runtime is asked directly)."""
    prompt = runtime.format.split(list(task.messages))
    answers = runtime.run(prompt, [task.render(t) for t in CONTENT_FREE],
                          lambda i, n: task.program(CONTENT_FREE[i], n), task.answer_tokens)
    return [{"text": t, "picks": [_choice(c) for c in a.value[1]]} for t, a in zip(CONTENT_FREE, answers)]


def folder_of(model: str) -> Path:
    """Where a model's saved runs live: named after its file."""
    from duckllm.store import ModelStore
    return OUT / ModelStore(Settings.from_env().home).resolve(model).stem


def load(model: str, name: str) -> tuple[list[dict], dict]:
    folder = folder_of(model)
    rows = [json.loads(line) for line in (folder / f"{name}.jsonl").open()]
    return rows, json.loads((folder / f"{name}.meta.json").read_text())


# ---- raw signals of one Pick, compared by AUROC ------------------------------------------------

def _restricted(branch) -> list[float]:
    """A decision's allowed tokens' probabilities renormalised over them, likeliest first."""
    logps = [lp for _, lp in branch]
    top = max(logps)
    weights = [math.exp(lp - top) for lp in logps]
    return sorted((w / sum(weights) for w in weights), reverse=True)


def _decisions(pick) -> list[list[float]]:
    """The restricted distributions of the decisions that had a rival."""
    return [d for d in map(_restricted, pick["branches"]) if len(d) > 1]


def _margin(d: list[float]) -> float:
    return d[0] - d[1]


def _certainty(d: list[float]) -> float:
    """1 - entropy / its most: 1 when all mass is on one branch, 0 when spread evenly."""
    return 1 + sum(p * math.log(p) for p in d if p > 0) / math.log(len(d))


def _in_set(pick) -> float:
    """The share of the whole vocabulary's mass the first decision gives the options' tokens."""
    logps = [lp for _, lp in pick["branches"][0]]
    top = max(logps)
    return math.exp(top) * sum(math.exp(lp - top) for lp in logps)


SIGNALS = {
    "mean_token": lambda k: confidence.mean_token_prob(k["token_logprobs"]) or 0.0,
    "choice": lambda k: math.exp(k["choice_logprob"]),
    "margin_min": lambda k: min((_margin(d) for d in _decisions(k)), default=1.0),
    "margin_first": lambda k: next((_margin(d) for d in _decisions(k)), 1.0),
    "certainty_first": lambda k: next((_certainty(d) for d in _decisions(k)), 1.0),
    "in_set": _in_set,
    "sequence": lambda k: confidence.sequence_prob(k["token_logprobs"]) or 0.0,
    "first_token": lambda k: math.exp(k["token_logprobs"][0]) if k["token_logprobs"] else 0.0,
    "decided": lambda k: math.exp(sum(max(lp for _, lp in b) for b in k["branches"])),
    "choice_x_mean_token": lambda k: math.sqrt(math.exp(k["choice_logprob"])
                                               * (confidence.mean_token_prob(k["token_logprobs"]) or 0.0)),
}


def decisions_of(name: str, rows: list[dict]) -> list[tuple[dict, bool]]:
    """(pick, answered right) for each decision scored: a row's label or match; each label's
    yes/no of a classify_multi row."""
    if name in MULTI:
        return [(p, (p["index"] == 0) == g) for r in rows for p, g in zip(r["picks"], r["gold"])]
    return [(r["picks"][0], r["predicted"] == r["gold"]) for r in rows]


def signals(args) -> None:
    """AUROC, then ECE, of each raw signal per dataset, pooled over the llm_classify sets, and
    the mean of their per-dataset AUROCs."""
    per_set, pooled = {}, {}
    for name in args.datasets.split(","):
        try:
            rows, _ = load(args.model, name)
        except FileNotFoundError:
            continue
        scored = decisions_of(name, rows)
        per_set[name] = (len(rows), {s: [of(p) for p, _ in scored] for s, of in SIGNALS.items()},
                         [ok for _, ok in scored])
        if name in CLASSIFY:
            for s in SIGNALS:
                pooled.setdefault(s, []).extend(zip(per_set[name][1][s], per_set[name][2]))
    for title, measure in (("AUROC", metrics.auroc), ("ECE", metrics.ece)):
        table = []
        for name, (n, values, right) in per_set.items():
            table.append({"dataset": name, "rows": n, "decisions": len(right), "accuracy": sum(right) / len(right),
                          **{s: measure(values[s], right) for s in SIGNALS}})
        if pooled:
            right = [ok for _, ok in next(iter(pooled.values()))]
            table.append({"dataset": "pooled llm_classify", "rows": len(right), "decisions": len(right),
                          "accuracy": sum(right) / len(right),
                          **{s: measure([v for v, _ in pairs], right) for s, pairs in pooled.items()}})
            classify_sets = [line for line in table if line["dataset"] in CLASSIFY]
            table.append({"dataset": "mean of llm_classify sets", **{
                s: sum(line[s] for line in classify_sets) / len(classify_sets) for s in SIGNALS}})
        print(f"\n{title} of each raw signal ({args.model})\n")
        print(markdown(table, ["dataset", "rows", "decisions", "accuracy", *SIGNALS]))


# ---- calibration from <= 100 labeled rows, cross-fitted ---------------------------------------

FIT_ROWS = 100
SEEDS = 5


def cross_fitted(signal_rows, correct, seed: int, methods=None, answers=None, criterion="brier"
                 ) -> tuple[list, list, list]:
    """Fit on FIT_ROWS rows (the map chosen by held-out ECE among them), score the rest:
    (raw first signal, calibrated, right or wrong) of the rows scored."""
    order = list(range(len(correct)))
    random.Random(seed).shuffle(order)
    fit_on, score_on = order[:FIT_ROWS], order[FIT_ROWS:]
    pick = lambda values, rows: None if values is None else [values[i] for i in rows]
    chosen, _ = calibration.choose(pick(signal_rows, fit_on), pick(correct, fit_on), methods, seed=seed,
                                   answers=pick(answers, fit_on), criterion=criterion)
    calibrated = chosen(pick(signal_rows, score_on), pick(answers, score_on))
    return ([signal_rows[i][0] for i in score_on], list(calibrated), [correct[i] for i in score_on])


VARIANTS = {   # name: (the signals the map reads, the maps it may choose from, by answer too, criterion)
    "sequence: llm_calibrate (auto)": (["sequence"], None, True, "brier"),
    "sequence: maps without offsets, by Brier": (["sequence"], calibration.METHODS, False, "brier"),
    "sequence: maps without offsets, by ECE": (["sequence"], calibration.METHODS, False, "ece"),
    "sequence: auto, by ECE": (["sequence"], None, True, "ece"),
    "mean_token: llm_calibrate (auto)": (["mean_token"], None, True, "brier"),
    "choice: llm_calibrate (auto)": (["choice"], None, True, "brier"),
    "mean_token + choice: platt": (["mean_token", "choice"], ("platt",), False, "brier"),
}


def calibrate(args) -> None:
    sets = [n for n in args.datasets.split(",") if n in CLASSIFY + MATCH]
    data = {}
    for name in sets:
        try:
            rows, _ = load(args.model, name)
        except FileNotFoundError:
            continue
        data[name] = decisions_of(name, rows)
    table = []
    for variant, (names, methods, by_answer, criterion) in VARIANTS.items():
        per_set: dict[str, list] = {n: [] for n in data}
        for seed in range(SEEDS):
            for name, scored in data.items():
                signal_rows = [[SIGNALS[s](p) for s in names] for p, _ in scored]
                try:
                    answers = [p["index"] for p, _ in scored] if by_answer else None
                    raw, cal, ok = cross_fitted(signal_rows, [ok for _, ok in scored], seed, methods, answers,
                                                criterion)
                except calibration.CalibrationError as e:
                    print(f"{name}: {e}", file=sys.stderr)
                    continue
                per_set[name].append((raw, cal, ok))
        table.append(_calibration_line(variant, per_set))
    print(f"Fitted on {FIT_ROWS} rows per set, scored on the rest; {SEEDS} seeds, pooled over seeds.")
    print(markdown(table, list(table[0])))
    thresholds(data)


TARGETS = (0.8, 0.9)


def thresholds(data: dict[str, list]) -> None:
    """Do cuts chosen on the labeled rows hold on new ones? Per set and seed: llm_calibrate's
    map and cut for a target precision from the FIT_ROWS rows (their cross-fitted confidences,
    as llm_thresholds gives them), then the precision and coverage that cut gives on the rest."""
    table = []
    for name, scored in data.items():
        signal_rows = [[SIGNALS["sequence"](p)] for p, _ in scored]
        right, answers = [ok for _, ok in scored], [p["index"] for p, _ in scored]
        for target in TARGETS:
            kept = total = hits = 0
            for seed in range(SEEDS):
                order = list(range(len(right)))
                random.Random(seed).shuffle(order)
                fit_on, score_on = order[:FIT_ROWS], order[FIT_ROWS:]
                pick = lambda values, rows: [values[i] for i in rows]
                try:
                    chosen, report = calibration.choose(pick(signal_rows, fit_on), pick(right, fit_on), seed=seed,
                                                        answers=pick(answers, fit_on))
                except calibration.CalibrationError:
                    continue
                own = calibration.held_out(report.chosen, pick(signal_rows, fit_on), pick(right, fit_on),
                                           seed=seed, answers=pick(answers, fit_on))
                cut = calibration.for_precision(own, pick(right, fit_on), target).cut
                new = chosen(pick(signal_rows, score_on), pick(answers, score_on))
                answered = [right[i] for i, c in zip(score_on, new) if c >= cut]
                kept, total, hits = kept + len(answered), total + len(score_on), hits + sum(answered)
            table.append({"dataset": name, "target precision": target, "precision on new rows":
                          hits / kept if kept else None, "coverage on new rows": kept / total if total else None})
    print(f"\nCuts for a target precision, chosen on {FIT_ROWS} labeled rows, on the rest ({SEEDS} seeds):\n")
    print(markdown(table, list(table[0])))


def _calibration_line(variant: str, per_set: dict[str, list]) -> dict:
    """ECE per set and pooled, AUROC raw and calibrated over the classify sets, accuracy gain
    from abstaining on the least confident 20% (calibrated confidence, pooled)."""
    flat = lambda names, k: [v for n in names for run in per_set[n] for v in run[k]]
    names = [n for n in per_set if per_set[n]]
    classify_sets = [n for n in names if n in CLASSIFY]
    line = {"variant": variant}
    for n in names:
        line[f"ece {n}"] = metrics.ece(flat([n], 1), flat([n], 2))
    ok = flat(names, 2)
    line["ece pooled"] = metrics.ece(flat(names, 1), ok)
    line["ece raw pooled"] = metrics.ece(flat(names, 0), ok)
    c_ok = flat(classify_sets, 2)
    line["auroc classify raw"] = metrics.auroc(flat(classify_sets, 0), c_ok)
    line["auroc classify cal"] = metrics.auroc(flat(classify_sets, 1), c_ok)
    accuracy = sum(ok) / len(ok)
    line["acc"] = accuracy
    line["gain@80% cal"] = metrics.accuracy_at(flat(names, 1), ok, 0.8) - accuracy
    line["gain@80% raw"] = metrics.accuracy_at(flat(names, 0), ok, 0.8) - accuracy
    return line


# ---- label-free (contextual) calibration, offline ----------------------------------------------

def _label_distribution(pick, first: dict[str, int], labels: list[str]) -> list[float] | None:
    """P(label | the label set) from the first decision, where every label has a first token of
    its own (else None): later tokens of a label are then forced, so this is the decoder's
    whole distribution over the labels."""
    if len(set(first.values())) < len(labels) or len(pick["branches"][0]) < len(labels):
        return None
    logp = dict(pick["branches"][0])
    top = max(logp[first[l]] for l in labels)
    weights = [math.exp(logp[first[l]] - top) for l in labels]
    return [w / sum(weights) for w in weights]


def contextual(args) -> None:
    """Zhao et al. 2021: divide each row's label distribution by the mean distribution of the
    content-free inputs, renormalise, answer the likeliest. Offline from the first decision where
    every label has a first token of its own; decoded (run --contextual, whole label paths for
    the prior) where that run was saved. Accuracy with and without on the same rows, the paired
    difference and its standard error, ECE and AUROC of the confidence."""
    table = []
    folder = folder_of(args.model)
    for name in [n for n in args.datasets.split(",") if n in CLASSIFY]:
        try:
            rows, meta = load(args.model, name)
        except FileNotFoundError:
            continue
        labels = meta["labels"]
        first = {l: meta["label_tokens"][l][0] for l in labels}
        free = json.loads((folder / f"{name}.content_free.json").read_text())
        priors = [_label_distribution(c["picks"][0], first, labels) for c in free]
        dists = [_label_distribution(r["picks"][0], first, labels) for r in rows]
        if not any(d is None for d in priors + dists):
            prior = [sum(p[i] for p in priors) / len(priors) for i in range(len(labels))]
            raw, cc = [], []
            for r, d in zip(rows, dists):
                for out, divide in ((raw, [1.0] * len(labels)), (cc, prior)):
                    q = [p / w for p, w in zip(d, divide)]
                    best = max(range(len(labels)), key=q.__getitem__)
                    out.append((labels[best] == r["gold"], q[best] / sum(q)))
            table.append(_contextual_line(name, "first decision, offline", raw, cc))
        decoded = folder / f"{name}.contextual.jsonl"
        if decoded.exists():
            by_id = {r["id"]: r for r in rows}
            pairs = [(by_id[c["id"]], c) for c in map(json.loads, decoded.open())]
            for signal in ("sequence", "choice"):
                of = SIGNALS[signal]
                table.append(_contextual_line(
                    name, f"decoded, {signal}", [(r["predicted"] == r["gold"], of(r["picks"][0])) for r, _ in pairs],
                    [(c["predicted"] == c["gold"], of(c["picks"][0])) for _, c in pairs]))
    print(markdown(table, ["dataset", "rows", "how", "acc raw", "acc cc", "gain", "se", "ece raw", "ece cc",
                           "auroc raw", "auroc cc"]))


def _contextual_line(name: str, how: str, raw: list, cc: list) -> dict:
    """raw, cc: (right?, confidence) per row, the same rows."""
    diffs = [int(b[0]) - int(a[0]) for a, b in zip(raw, cc)]
    mean = sum(diffs) / len(diffs)
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
    line = {"dataset": name, "rows": len(raw), "how": how, "gain": mean, "se": se}
    for tag, scored in (("raw", raw), ("cc", cc)):
        right, conf = [ok for ok, _ in scored], [c for _, c in scored]
        line[f"acc {tag}"] = sum(right) / len(right)
        line[f"ece {tag}"] = metrics.ece(conf, right)
        line[f"auroc {tag}"] = metrics.auroc(conf, right)
    return line


def markdown(rows: list[dict], columns: list[str]) -> str:
    cell = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "signals", "calibrate", "contextual"])
    ap.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--datasets", default=",".join(CLASSIFY + MATCH + MULTI))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--contextual", action="store_true", help="run: decode with contextual calibration")
    args = ap.parse_args()
    {"run": run, "signals": signals, "calibrate": calibrate, "contextual": contextual}[args.command](args)


if __name__ == "__main__":
    main()
