"""The suite's task kinds as data: for each, the function it measures, what one question is about
(a row, or an id's rows), how its questions are put to an asker, the gold answer, and how an answer
is scored. suite.run_dataset runs any of them the same way.

  classification  -> llm_classify          entity_matching -> llm_match
  extraction      -> llm_extract (one typed field per attribute; wdc_pave: llm_enrich)
  ner             -> llm_entities          cleaning        -> llm_clean
  slots           -> llm_classify_multi    (which slots a restaurant8k utterance fills)
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from duckllm.confidence.calibration import answer_key
from duckllm.evaluation.askers import Answer, Asker, Entity
from duckllm.evaluation.datasets import Dataset
from duckllm.evaluation.scoring import MISSING, Scored, Tally, value_right

SLOTS = {"people": "how many people the booking is for", "date": "the day of the booking",
         "time": "the time of the booking", "first_name": "the first name of the person booking",
         "last_name": "the last name of the person booking"}
NER_TYPES = ["PER", "ORG", "LOC", "MISC"]

Unit = Any     # what one question is about: a row (dict), or an id's rows (list of dicts)


@dataclass(frozen=True)
class Call:
    """Questions put to an asker in one call: the units they are about, and the call itself."""
    units: list[Unit]
    ask: Callable[[Asker], list]       # one answer per unit


@dataclass(frozen=True)
class Kind:
    function: str                                       # the duckllm function it measures
    units: Callable[[list[list[dict]]], list[Unit]]     # sampled ids (each its rows) -> questions
    calls: Callable[[Dataset, list[Unit]], Iterable[Call]]
    gold: Callable[[Unit], Any]
    score: Callable[[Any, Any, Tally], list[Scored]]    # (answer, gold, F1 tally) -> scored answers
    f1: bool = False                                    # F1 over the tally is reported too
    rows: Callable[[list[Unit]], int] = len             # the report's row count


def _first_rows(groups):
    return [g[0] for g in groups]


def _all_rows(groups):
    return [r for g in groups for r in g]


def _one_call(ask: Callable[[Asker, list[Unit]], list]):
    """All units in one call."""
    return lambda dataset, units: [Call(units, lambda asker: ask(asker, units, dataset))]


def _by(key: Callable[[Unit], Any], ask: Callable[[Asker, list[Unit], Any], list]):
    """One call per key (the units sharing an attribute or a schema), in order of first appearance."""
    def calls(dataset, units):
        shared: dict[Any, list[Unit]] = defaultdict(list)
        for u in units:
            shared[key(u)].append(u)
        return [Call(group, lambda asker, group=group, k=k: ask(asker, group, k)) for k, group in shared.items()]
    return calls


def _one(answer: Answer, right: bool) -> list[Scored]:
    return [Scored(right, answer.confidence, invalid=answer.invalid, answer=answer_key(answer.value))]


# ---- scoring, per kind -------------------------------------------------------------------------

def _score_match(answer: Answer, gold: bool, tally: Tally) -> list[Scored]:
    tally.add(answer.value, gold)
    return _one(answer, answer.value == gold)


def _score_extract(answers: dict[str, Answer], rows: list[dict], tally: Tally) -> list[Scored]:
    return [Scored(value_right(answers[r["attribute"]].value, r), answers[r["attribute"]].confidence,
                   invalid=answers[r["attribute"]].invalid) for r in rows]


def _score_entities(found: list[Entity], truth: set, tally: Tally) -> list[Scored]:
    tally.add({(e.type, e.text) for e in found}, truth)
    return [Scored((e.type, e.text) in truth, e.confidence) for e in found]


def _score_slots(decided: dict[str, Answer], truth: set, tally: Tally) -> list[Scored]:
    scored = []
    for slot, answer in decided.items():
        scored.append(Scored(answer.value == (slot in truth), answer.confidence, invalid=answer.invalid))
        tally.add(answer.value, slot in truth)
    return scored


KINDS: dict[str, Kind] = {
    "classification": Kind(
        "llm_classify", _first_rows,
        _one_call(lambda asker, rows, d: asker.classify([r["text"] for r in rows], d.labels, d.descriptions)),
        gold=lambda row: row["label"],
        score=lambda answer, gold, tally: _one(answer, answer.value == gold)),
    "entity_matching": Kind(
        "llm_match", _first_rows,
        _one_call(lambda asker, rows, d: asker.match([(r["left"], r["right"]) for r in rows])),
        gold=lambda row: row["label"] == "match", score=_score_match, f1=True),
    # one llm_extract call per product, its attributes as VARCHAR fields
    "extraction": Kind(
        "llm_extract", lambda groups: groups,
        _by(lambda product: tuple(r["attribute"] for r in product),
            lambda asker, products, attributes: asker.extract([p[0]["text"] for p in products], list(attributes))),
        gold=lambda product: product, score=_score_extract,
        rows=lambda products: sum(len(p) for p in products)),
    # one question per (product, attribute): 'What is the <attribute> of this product?'
    "enrich": Kind(
        "llm_enrich", _all_rows,
        _by(lambda row: row["attribute"],
            lambda asker, rows, attribute: asker.enrich(
                [r["text"] for r in rows], f"What is the {attribute} of this product? Answer n/a if the text does not say.")),
        gold=lambda row: row, score=lambda answer, row, tally: _one(answer, value_right(answer.value, row))),
    # entity-level F1 over (type, text) pairs; each entity found is scored right or wrong
    "ner": Kind(
        "llm_entities", lambda groups: groups,
        _one_call(lambda asker, sentences, d: asker.entities([s[0]["text"] for s in sentences], NER_TYPES)),
        gold=lambda sentence: {(r["attribute"], e) for r in sentence for e in json.loads(r["value"] or "[]")},
        score=_score_entities, f1=True),
    # which booking slots an utterance fills: one yes/no decision per slot
    "slots": Kind(
        "llm_classify_multi", lambda groups: groups,
        _one_call(lambda asker, utterances, d: asker.slots([u[0]["text"] for u in utterances], SLOTS)),
        gold=lambda utterance: {r["attribute"] for r in utterance if r["value"] != MISSING},
        score=_score_slots, f1=True),
    "cleaning": Kind(
        "llm_clean", _all_rows,
        _one_call(lambda asker, rows, d: asker.clean([r["dirty"] for r in rows])),
        gold=lambda row: row["clean"].strip(),
        score=lambda answer, gold, tally: _one(answer, (answer.value or "").strip() == gold)),
}
