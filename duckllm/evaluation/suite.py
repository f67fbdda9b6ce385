"""Quality of duckllm's functions on a labeled suite: a manifest (datasets.json) naming, per
dataset, its task, CSV file and columns, in the format of the public suite duckllm is measured on.

Each dataset runs through its matching function on a fixed-seed sample of its ids:
  classification  -> llm_classify          entity_matching -> llm_match
  extraction      -> llm_extract (one typed field per attribute; wdc_pave: llm_enrich)
  ner             -> llm_entities          cleaning        -> llm_clean
  slots           -> llm_classify_multi    (which slots a restaurant8k utterance fills)
and each answer is scored against the gold one. The baseline asks the same model in free text,
one chat completion per row, and parses the reply, as a tool without constrained decoding would.
"""
from __future__ import annotations

import csv
import json
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from duckllm.confidence import auroc, mean_token_prob
from duckllm.errors import ArgumentError
from duckllm.tasks import (
    classify,
    classify_multi,
    clean,
    enrich,
    entities,
    extract,
    listing,
    match,
)

SEED = 20261124
# Bare labels mean little to a small model; a user would describe them the same way.
DESCRIPTIONS = {
    "sms_spam": {"ham": "an ordinary personal message between people (not spam)",
                 "spam": "unsolicited advertising, a prize, offer or scam message"},
}
SLOTS = {"people": "how many people the booking is for", "date": "the day of the booking",
         "time": "the time of the booking", "first_name": "the first name of the person booking",
         "last_name": "the last name of the person booking"}
MISSING = "n/a"


@dataclass
class Scored:
    """One answer: right or wrong, with the confidence duckllm gave it; invalid = unparseable."""
    correct: bool
    confidence: float | None
    invalid: bool = False
    answer: str | None = None    # the answer given (a label), for calibration with offsets by answer


@dataclass
class Result:
    dataset: str
    function: str
    method: str
    rows: int
    seconds: float
    scored: list[Scored] = field(default_factory=list)
    f1: float | None = None      # where the task calls for it (matching, entities, slots)

    @property
    def accuracy(self) -> float:
        return sum(s.correct for s in self.scored) / max(1, len(self.scored))

    @property
    def invalid(self) -> int:
        return sum(s.invalid for s in self.scored)

    @property
    def auroc(self) -> float | None:
        return auroc([s.confidence or 0.0 for s in self.scored], [s.correct for s in self.scored])

    def row(self) -> dict:
        return {"dataset": self.dataset, "function": self.function, "method": self.method,
                "rows": self.rows, "accuracy": self.accuracy, "f1": self.f1, "invalid": self.invalid,
                "auroc": self.auroc, "rows_per_s": self.rows / self.seconds if self.seconds else None}


def manifest(suite: Path) -> dict:
    return json.loads((Path(suite) / "datasets.json").read_text())


def default_suite() -> Path | None:
    """The public suite beside this checkout or the current directory, when it is there."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = root.parent / "shared" / "data"
        if (candidate / "datasets.json").exists():
            return candidate
    return None


def read_rows(suite: Path, spec: dict) -> list[dict]:
    """A dataset's rows as text: a CSV file, or a Parquet file (a table exported from DuckDB)."""
    path = Path(suite) / spec["file"]
    if path.suffix == ".parquet":
        import duckdb
        relation = duckdb.connect().sql(f"SELECT * FROM read_parquet('{path}')")
        return [{k: "" if v is None else str(v) for k, v in zip(relation.columns, row)} for row in relation.fetchall()]
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def labels_of(suite: Path, spec: dict) -> list[str]:
    if spec.get("labels"):
        return list(spec["labels"])
    return [l for l in (Path(suite) / spec["labels_file"]).read_text().splitlines() if l]


def sample_ids(rows: list[dict], limit: int) -> list[list[dict]]:
    """A fixed-seed sample of `limit` ids, each with all its rows (several per id in extraction)."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_id[r["id"]].append(r)
    ids = sorted(by_id)
    return [by_id[i] for i in random.Random(SEED).sample(ids, min(limit, len(ids)))]


def run_dataset(engine, suite: Path, name: str, limit: int, baseline=None) -> list[Result]:
    """duckllm's result for one dataset, then the baseline's (a FreeText) when given."""
    specs = manifest(suite)
    if name not in specs:
        raise ArgumentError(f"no dataset {name!r} in {Path(suite) / 'datasets.json'}; it has {', '.join(specs)}")
    spec = specs[name]
    kind = _kind(name, spec)
    if kind not in RUNNERS:
        raise ArgumentError(f"dataset {name!r} has task {kind!r}; duckllm bench runs {', '.join(sorted(RUNNERS))}")
    groups = sample_ids(read_rows(suite, spec), limit)
    runner = RUNNERS[kind]
    results = [runner(name, spec, suite, groups, DuckllmAsker(engine))]
    if baseline is not None:
        results.append(runner(name, spec, suite, groups, baseline))
    return results


def _kind(name: str, spec: dict) -> str:
    if name == "restaurant8k":
        return "slots"
    if name == "wdc_pave":
        return "enrich"
    return spec["task"]


# ---- askers: duckllm's functions, or the same model in free text -------------------------------

class DuckllmAsker:
    method = "duckllm"

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, task, texts):
        return self.engine.run(task, texts, use_cache=False)   # measure the model, not the cache


class FreeText:
    """The model asked in a plain chat prompt, one completion per row, read by each runner."""
    method = "free text"

    def __init__(self, model_path: str, n_ctx: int = 2048):
        from llama_cpp import Llama
        self.llm = Llama(model_path=str(model_path), n_ctx=n_ctx, logits_all=True, verbose=False)

    def complete(self, system: str, text: str, max_tokens: int = 48) -> tuple[str, float]:
        out = self.llm.create_chat_completion(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
            max_tokens=max_tokens, temperature=0.0, logprobs=True, top_logprobs=1)
        choice = out["choices"][0]
        logprobs = [t["logprob"] for t in (choice.get("logprobs") or {}).get("content", [])]
        return choice["message"]["content"] or "", mean_token_prob(logprobs) or 0.0


def _timed(name, function, asker, n_rows, work) -> Result:
    start = time.perf_counter()
    result = Result(name, function, asker.method, n_rows, 0.0)
    work(result)
    result.seconds = time.perf_counter() - start
    return result


def _norm(s) -> str:
    return re.sub(r"[^a-z0-9]+", " ", str(s or "").lower()).strip()


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# ---- runners, one per task kind -----------------------------------------------------------------

def run_classification(name, spec, suite, groups, asker) -> Result:
    rows = [g[0] for g in groups]
    labels = labels_of(suite, spec)
    desc = spec.get("descriptions") or DESCRIPTIONS.get(name, {})

    def work(result):
        texts, gold = [r["text"] for r in rows], [r["label"] for r in rows]
        if isinstance(asker, DuckllmAsker):
            answers = asker(classify.build(labels, {"descriptions": desc or None}), texts)
            for a, g in zip(answers, gold):
                result.scored.append(Scored(a["label"] == g, a["confidence"], answer=a["label"]))
            return
        system = f"Classify the text into one of these labels:\n{listing(labels, desc)}\nAnswer with the label only."
        normal = {_norm(l): l for l in labels}
        for text, g in zip(texts, gold):
            reply, conf = asker.complete(system, text, 24)
            label = normal.get(_norm(reply))
            result.scored.append(Scored(label == g, conf, invalid=label is None))
    return _timed(name, "llm_classify", asker, len(rows), work)


def run_matching(name, spec, suite, groups, asker) -> Result:
    rows = [g[0] for g in groups]

    def work(result):
        gold = [r["label"] == "match" for r in rows]
        if isinstance(asker, DuckllmAsker):
            answers = asker(match.build(), [match.pair(r["left"], r["right"]) for r in rows])
            predicted = [(a["match"], a["confidence"], False) for a in answers]
        else:
            predicted = []
            for r in rows:
                reply, conf = asker.complete(match.SYSTEM, match.render(match.pair(r["left"], r["right"])), 8)
                word = _norm(reply).split()[:1]
                predicted.append((word == ["yes"], conf, word not in (["yes"], ["no"])))
        tp = sum(p and g for (p, _, _), g in zip(predicted, gold))
        fp = sum(p and not g for (p, _, _), g in zip(predicted, gold))
        fn = sum(g and not p for (p, _, _), g in zip(predicted, gold))
        result.f1 = _f1(tp, fp, fn)
        result.scored += [Scored(p == g, c, invalid=bad, answer=str(p).lower()) for (p, c, bad), g in zip(predicted, gold)]
    return _timed(name, "llm_match", asker, len(rows), work)


def _gold_values(row) -> list[str]:
    values = json.loads(row.get("all_values") or "[]") or [row["value"]]
    return [_norm(v) for v in values]


def _value_right(predicted, row) -> bool:
    gold = _gold_values(row)
    if predicted is None or _norm(predicted) in ("", "n a", "null", "none"):
        return _norm(MISSING) in gold
    return _norm(predicted) in gold


def run_extraction(name, spec, suite, groups, asker) -> Result:
    """One llm_extract call per product: its attributes as VARCHAR fields."""
    n_rows = sum(len(g) for g in groups)

    def work(result):
        by_schema: dict[tuple, list[list[dict]]] = defaultdict(list)
        for g in groups:
            by_schema[tuple(r["attribute"] for r in g)].append(g)
        for attributes, products in by_schema.items():
            schema = {a: "VARCHAR" for a in attributes}
            texts = [p[0]["text"] for p in products]
            if isinstance(asker, DuckllmAsker):
                answers = asker(extract.build(schema), texts)
                for p, a in zip(products, answers):
                    for r in p:
                        result.scored.append(Scored(_value_right(a[r["attribute"]], r),
                                                    a["confidence"][r["attribute"]]))
                continue
            system = (f"Extract these attributes from the product text: {', '.join(attributes)}. Answer with "
                      f"one line per attribute as `attribute: value`, and n/a when the text does not give it.")
            for p, text in zip(products, texts):
                reply, conf = asker.complete(system, text, 16 * len(attributes))
                lines = dict(_split_line(l) for l in reply.splitlines() if ":" in l)
                for r in p:
                    value = lines.get(_norm(r["attribute"]))
                    result.scored.append(Scored(_value_right(value, r), conf, invalid=value is None))
    return _timed(name, "llm_extract", asker, n_rows, work)


def _split_line(line: str) -> tuple[str, str]:
    key, _, value = line.partition(":")
    return _norm(key.strip(" -*`")), value.strip()


def run_enrich(name, spec, suite, groups, asker) -> Result:
    """One question per (product, attribute): 'What is the <attribute> of this product?'"""
    rows = [r for g in groups for r in g]

    def work(result):
        by_attribute: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_attribute[r["attribute"]].append(r)
        for attribute, items in by_attribute.items():
            question = f"What is the {attribute} of this product? Answer n/a if the text does not say."
            texts = [r["text"] for r in items]
            if isinstance(asker, DuckllmAsker):
                for r, a in zip(items, asker(enrich.build(question, 16), texts)):
                    result.scored.append(Scored(_value_right(a["value"], r), a["confidence"]))
                continue
            for r, text in zip(items, texts):
                reply, conf = asker.complete(enrich.SYSTEM.format(question=question), text, 16)
                result.scored.append(Scored(_value_right(reply.strip().rstrip("."), r), conf))
    return _timed(name, "llm_enrich", asker, len(rows), work)


def run_ner(name, spec, suite, groups, asker) -> Result:
    """Entity-level F1 over (type, text) pairs; each predicted entity is scored right or wrong."""
    types = ["PER", "ORG", "LOC", "MISC"]
    texts = [g[0]["text"] for g in groups]
    gold = [{(r["attribute"], e) for r in g for e in json.loads(r["value"] or "[]")} for g in groups]

    def work(result):
        if isinstance(asker, DuckllmAsker):
            found = [[(e["type"], e["text"], e["confidence"]) for e in (a["entities"] or [])]
                     for a in asker(entities.build(types), texts)]
        else:
            system = entities.SYSTEM.format(types=listing(types, entities.KNOWN))
            found = []
            for text in texts:
                reply, conf = asker.complete(system, text, 96)
                pairs = [tuple(s.strip() for s in l.split(":", 1)) for l in reply.splitlines() if ":" in l]
                found.append([(t, e, conf) for t, e in pairs if t in types])
        tp = fp = fn = 0
        for predicted, truth in zip(found, gold):
            keys = {(t, e) for t, e, _ in predicted}
            tp, fp, fn = tp + len(keys & truth), fp + len(keys - truth), fn + len(truth - keys)
            result.scored += [Scored((t, e) in truth, c) for t, e, c in predicted]
        result.f1 = _f1(tp, fp, fn)
    return _timed(name, "llm_entities", asker, len(texts), work)


def run_slots(name, spec, suite, groups, asker) -> Result:
    """Which booking slots an utterance fills: one yes/no decision per slot."""
    slots = list(SLOTS)
    texts = [g[0]["text"] for g in groups]
    gold = [{r["attribute"] for r in g if r["value"] != MISSING} for g in groups]

    def work(result):
        if isinstance(asker, DuckllmAsker):
            task = classify_multi.build(slots, {"descriptions": SLOTS, "threshold": 0})
            probs = [{x["label"]: x["confidence"] for x in a["labels"]} for a in asker(task, texts)]
            decided = [{s: (p[s] >= 0.5, max(p[s], 1 - p[s]), False) for s in slots} for p in probs]
        else:
            system = (f"Which of these details does the restaurant booking message give?\n{listing(slots, SLOTS)}\n"
                      f"Answer with the names of those it gives, comma-separated, or none.")
            decided = []
            for text in texts:
                reply, conf = asker.complete(system, text, 24)
                named = {_norm(w).replace(" ", "_") for w in reply.split(",")}
                decided.append({s: (s in named, conf, False) for s in slots})
        tp = fp = fn = 0
        for d, truth in zip(decided, gold):
            for s, (yes, conf, bad) in d.items():
                result.scored.append(Scored(yes == (s in truth), conf, invalid=bad))
                tp, fp, fn = tp + (yes and s in truth), fp + (yes and s not in truth), fn + (not yes and s in truth)
        result.f1 = _f1(tp, fp, fn)
    return _timed(name, "llm_classify_multi", asker, len(texts), work)


def run_cleaning(name, spec, suite, groups, asker) -> Result:
    rows = [r for g in groups for r in g]

    def work(result):
        dirty = [r["dirty"] for r in rows]
        if isinstance(asker, DuckllmAsker):
            answers = [a or {"value": None, "confidence": None} for a in asker(clean.build(), dirty)]
            values = [(a["value"], a["confidence"]) for a in answers]
        else:
            values = [asker.complete(clean.SYSTEM, d, 32) for d in dirty]
        for r, (value, conf) in zip(rows, values):
            result.scored.append(Scored((value or "").strip() == r["clean"].strip(), conf))
    return _timed(name, "llm_clean", asker, len(rows), work)


RUNNERS = {
    "classification": run_classification, "entity_matching": run_matching, "extraction": run_extraction,
    "enrich": run_enrich, "ner": run_ner, "slots": run_slots, "cleaning": run_cleaning,
}
