"""Who answers the suite's questions: duckllm's functions, or the same model in free text.

Both askers have one method per kind of question, and each answers in the same shapes, so a task
kind scores either the same way:
  Answer(value, confidence, invalid)   a label, a yes/no, a value; invalid: a reply it could not read
  Entity(type, text, confidence)       a named entity found in a text
The free-text asker sends a plain chat prompt, one completion per row, and reads the reply as a
tool without constrained decoding would; its confidence is the reply's mean token probability.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from duckllm.confidence import mean_token_prob
from duckllm.evaluation.scoring import norm
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


class Answer(NamedTuple):
    value: Any
    confidence: float | None
    invalid: bool = False


class Entity(NamedTuple):
    type: str
    text: str
    confidence: float | None


class Asker(Protocol):
    method: str       # how the report names it

    def classify(self, texts: list[str], labels: list[str], descriptions: dict[str, str]) -> list[Answer]:
        """One label of labels per text (value None when the reply names none)."""

    def match(self, pairs: list[tuple[str, str]]) -> list[Answer]:
        """Whether each pair of records is the same entity: value True or False."""

    def extract(self, texts: list[str], attributes: list[str]) -> list[dict[str, Answer]]:
        """Each attribute's value in each text (value None when not given)."""

    def enrich(self, texts: list[str], question: str) -> list[Answer]:
        """The answer to question about each text."""

    def entities(self, texts: list[str], types: list[str]) -> list[list[Entity]]:
        """The named entities of types in each text."""

    def slots(self, texts: list[str], slots: dict[str, str]) -> list[dict[str, Answer]]:
        """Which booking details ({name: description}) each text gives: value True or False."""

    def clean(self, texts: list[str]) -> list[Answer]:
        """Each messy value cleaned."""


class DuckllmAsker:
    """duckllm's functions, on the engine's model, with the result cache off: the model is measured."""
    method = "duckllm"

    def __init__(self, engine):
        self.engine = engine

    def _run(self, task, texts):
        return self.engine.run(task, texts, use_cache=False)

    def classify(self, texts, labels, descriptions):
        answers = self._run(classify.build(labels, {"descriptions": descriptions or None}), texts)
        return [Answer(a["label"], a["confidence"]) for a in answers]

    def match(self, pairs):
        answers = self._run(match.build(), [match.pair(left, right) for left, right in pairs])
        return [Answer(a["match"], a["confidence"]) for a in answers]

    def extract(self, texts, attributes):
        answers = self._run(extract.build({a: "VARCHAR" for a in attributes}), texts)
        return [{name: Answer(a[name], a["confidence"][name]) for name in attributes} for a in answers]

    def enrich(self, texts, question):
        return [Answer(a["value"], a["confidence"]) for a in self._run(enrich.build(question, 16), texts)]

    def entities(self, texts, types):
        return [[Entity(e["type"], e["text"], e["confidence"]) for e in (a["entities"] or [])]
                for a in self._run(entities.build(types), texts)]

    def slots(self, texts, slots):
        task = classify_multi.build(list(slots), {"descriptions": slots, "threshold": 0})
        decided = []
        for a in self._run(task, texts):
            p = {x["label"]: x["confidence"] for x in a["labels"]}
            decided.append({s: Answer(p[s] >= 0.5, max(p[s], 1 - p[s])) for s in slots})
        return decided

    def clean(self, texts):
        answers = [a or {"value": None, "confidence": None} for a in self._run(clean.build(), texts)]
        return [Answer(a["value"], a["confidence"]) for a in answers]


class FreeText:
    """The model asked in a plain chat prompt, one completion per row, its reply read as text.

    n_threads, n_gpu_layers: llama-cpp-python's (its defaults unless given); logprobs=False asks
    for no token probabilities (every confidence is then 0), as a hand-written loop would not.
    completion_tokens counts the tokens generated so far."""
    method = "free text"

    def __init__(self, model_path: str, n_ctx: int = 2048, *, n_threads: int | None = None,
                 n_gpu_layers: int = 0, logprobs: bool = True):
        from llama_cpp import Llama
        self.logprobs = logprobs
        self.completion_tokens = 0
        self.llm = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                         logits_all=logprobs, verbose=False)

    def complete(self, system: str, text: str, max_tokens: int = 48) -> tuple[str, float]:
        """The reply to text under the system prompt, and its mean token probability."""
        wanted = {"logprobs": True, "top_logprobs": 1} if self.logprobs else {}
        out = self.llm.create_chat_completion(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
            max_tokens=max_tokens, temperature=0.0, **wanted)
        self.completion_tokens += out["usage"]["completion_tokens"]
        choice = out["choices"][0]
        logprobs = [t["logprob"] for t in (choice.get("logprobs") or {}).get("content", [])]
        return choice["message"]["content"] or "", mean_token_prob(logprobs) or 0.0

    def _ask(self, system: str, texts: list[str], max_tokens: int, read) -> list:
        """Each text's reply under system, read into an answer by read(reply, confidence)."""
        return [read(*self.complete(system, text, max_tokens)) for text in texts]

    def classify(self, texts, labels, descriptions):
        system = (f"Classify the text into one of these labels:\n{listing(labels, descriptions)}\n"
                  f"Answer with the label only.")
        label_of = label_reader(labels)

        def read(reply, confidence):
            label = label_of(reply)
            return Answer(label, confidence, invalid=label is None)
        return self._ask(system, texts, 24, read)

    def match(self, pairs):
        def read(reply, confidence):
            word = norm(reply).split()[:1]
            return Answer(word == ["yes"], confidence, invalid=word not in (["yes"], ["no"]))
        return self._ask(match.SYSTEM, [match.render(match.pair(left, right)) for left, right in pairs], 8, read)

    def extract(self, texts, attributes):
        system = (f"Extract these attributes from the product text: {', '.join(attributes)}. Answer with "
                  f"one line per attribute as `attribute: value`, and n/a when the text does not give it.")

        def read(reply, confidence):
            lines = dict(_split_line(line) for line in reply.splitlines() if ":" in line)
            values = {name: lines.get(norm(name)) for name in attributes}
            return {name: Answer(v, confidence, invalid=v is None) for name, v in values.items()}
        return self._ask(system, texts, 16 * len(attributes), read)

    def enrich(self, texts, question):
        return self._ask(enrich.SYSTEM.format(question=question), texts, 16,
                         lambda reply, confidence: Answer(reply.strip().rstrip("."), confidence))

    def entities(self, texts, types):
        def read(reply, confidence):
            pairs = [tuple(s.strip() for s in line.split(":", 1)) for line in reply.splitlines() if ":" in line]
            return [Entity(t, e, confidence) for t, e in pairs if t in types]
        return self._ask(entities.SYSTEM.format(types=listing(types, entities.KNOWN)), texts, 96, read)

    def slots(self, texts, slots):
        system = (f"Which of these details does the restaurant booking message give?\n{listing(list(slots), slots)}\n"
                  f"Answer with the names of those it gives, comma-separated, or none.")

        def read(reply, confidence):
            named = {norm(w).replace(" ", "_") for w in reply.split(",")}
            return {s: Answer(s in named, confidence) for s in slots}
        return self._ask(system, texts, 24, read)

    def clean(self, texts):
        return self._ask(clean.SYSTEM, texts, 32, Answer)


def label_reader(labels: list[str]):
    """A free-text reply -> the label it names (compared as norm() text), or None."""
    normal = {norm(label): label for label in labels}
    return lambda reply: normal.get(norm(reply))


def _split_line(line: str) -> tuple[str, str]:
    key, _, value = line.partition(":")
    return norm(key.strip(" -*`")), value.strip()
