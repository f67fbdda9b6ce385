"""One engine call with agreement: sample, train, let the proxy answer what it may, send the rest
to the model.

Determinism. DuckDB hands a UDF chunks of up to 2,048 rows, from several threads at once for a
table of several row groups, in an order that changes from run to run. A proxy that learned from
every answer as it came would answer a row by what other threads happened to finish first. So a
call decides its rows from two things only: the examples stored when its query began (a mark in
the example store, taken by the query's first call, before any of its own answers are kept), and
the call's own rows (its cached answers and the model's answers to its sample). The same query
over the same data and cache gets the same answers whatever the thread schedule, as long as
DuckDB hands over the same chunks: true of a scan of a table or file, not promised for the output
of a parallel join or aggregate. What it costs: within its first query a task learns from each
chunk's own sample only, not from the chunks before it. On one DuckDB thread (SET threads = 1)
the chunks come in scan order, so the macros name no query and each call learns from every
answer stored so far, the chunks before it included ('free' learning): deterministic too, and
the model, which answers one batch at a time behind the engine's lock, loses nothing by it
(docs/proxy.md measures both).

Honest samples. A row is in the call's sample when the keyed hash of its text falls under the
call's rate (sampling.draw): never its position, so a sorted table is sampled as a shuffled one.
The rate tops the drawn rows up to what the bound needs, and never falls under AUDIT, so every
chunk keeps checking the proxy on fresh rows of its own. Only drawn rows check the proxy: the
rows it referred to the model (below its threshold) teach it, but are its hardest, not a sample.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from duckllm.proxy import Agreement, bound, classifier, features, sampling
from duckllm.proxy.examples import Example, ExampleStore

AUDIT = 0.05          # the least share of a call's new rows the model answers, to audit the proxy
WANT = 2              # a call's first look wants WANT x the rows the bound tests first, labeled
LOOKS = 4             # looks at a growing sample, each with the labeled rows doubled
FIRST_LOOK = 0.8      # the share of the error rate the first look spends (see _alpha)
KEEP_QUERIES = 4      # queries whose stored examples (and their features) are kept in memory
MIN_WEIGHT = 0.01     # the least an answer weighs in training: none is ignored outright

TOO_FEW = ("agreement: {rows} rows are too few for a proxy, which needs the model's answers to at least "
           "{need} first; the model answered every row")
NOT_REACHED = ("agreement: on {n} of the model's answers the proxy did not show {target:g} agreement at "
               "{confidence:g} confidence; the model answered this row")
DRIFTED = ("agreement: on this chunk's own sample the proxy agreed with the model less than on the stored "
           "examples (below {target:g}); the model answered this row")


@dataclass
class _Labeled:
    """Labeled rows in a fixed order, with their features."""
    keys: list[str]
    texts: list[str]
    labels: list[str]
    drawn: list[bool]               # answered whatever the proxy thought of it (examples.py)
    weights: list[float]            # the model's confidence in each answer
    X: sparse.csr_matrix | None


def _labeled(rows: list[Example], featurize) -> _Labeled:
    keys, texts, labels, drawn, weights = (list(c) for c in zip(*rows)) if rows else ([], [], [], [], [])
    return _Labeled(keys, texts, labels, drawn, weights, featurize(texts) if texts else None)


def _joined(a: _Labeled, b: _Labeled) -> _Labeled:
    X = a.X if b.X is None else b.X if a.X is None else sparse.vstack([a.X, b.X], format="csr")
    return _Labeled(a.keys + b.keys, a.texts + b.texts, a.labels + b.labels, a.drawn + b.drawn,
                    a.weights + b.weights, X)


def _example(key: str, text: str, spec: Agreement, result: dict, drawn: bool) -> Example:
    return Example(key, text, spec.label_of(result), drawn, weight_of(result))


def weight_of(result: dict) -> float:
    """What the model's answer weighs in training: its confidence in it. Its unsure answers are
    its least steady, and a proxy that learns less from them ranks the rows it can answer better
    (docs/proxy.md). A result without a confidence weighs 1."""
    confidence = result.get("confidence")
    return 1.0 if confidence is None else min(1.0, max(MIN_WEIGHT, float(confidence)))


@dataclass
class _Query:
    before: _Labeled                # the examples stored when the query began
    written: set[str]               # keys of the answers the model gave in this query so far


class Cascade:
    """The proxy's side of an engine: for each query, the examples stored when it began."""

    def __init__(self, store: ExampleStore):
        self.store = store
        self._queries: OrderedDict[tuple, _Query] = OrderedDict()
        self._lock = threading.Lock()

    def last_share(self, model_id: str, task_key: str) -> float | None:
        """The share of rows the proxy answered in the task's latest call (None: none yet)."""
        return self.store.last_share(model_id, task_key)

    def _query(self, spec: Agreement, model_id: str, task_key: str, query, keep: bool) -> _Query:
        """The query's state: its examples read, and featurised, once, by its first call."""
        featurize = features.FEATURES[spec.features]
        if not keep:
            return _Query(_labeled([], featurize), set())
        store = self.store
        if query is None:      # chunks in order (one thread), or a call of its own: all stored so far
            return _Query(_labeled(self._recalled(spec, store.rows(model_id, task_key)), featurize), set())
        with self._lock:
            key = (query, model_id, task_key, spec.features)
            if key not in self._queries:
                stored = self._recalled(spec, store.rows(model_id, task_key, upto=store.mark()))
                self._queries[key] = _Query(_labeled(stored, featurize), set())
                while len(self._queries) > KEEP_QUERIES:
                    self._queries.popitem(last=False)
            self._queries.move_to_end(key)
            return self._queries[key]

    def _recalled(self, spec: Agreement, rows: list[Example]) -> list[Example]:
        """The stored rows, their kept vectors read for those this process has not embedded."""
        if spec.features in features.EMBEDS:
            texts = [row.text for row in rows]
            known = features.embedded(texts)
            features.remember(self.store.vectors([t for t in texts if t not in known]))
        return rows

    def _keep_vectors(self, spec: Agreement, texts: list[str]) -> None:
        """Keep the vectors of texts that are, or are about to be, examples."""
        if spec.features in features.EMBEDS:
            self.store.keep_vectors(features.embedded(texts))

    def run(self, task, todo: list[str], keys: dict[str, str], cached: dict[str, dict], deliver,
            compute, model_id: str, query=None, keep: bool = True, counted=None) -> None:
        """Answer the call's distinct texts: `cached` (text -> result) found in the result cache,
        `todo` not, by the proxy or by compute(texts, deliver) on the model. keep: the result
        cache is on, so examples are read and kept beside it. counted(n): n rows the proxy answered."""
        spec: Agreement = task.agreement
        state = self._query(spec, model_id, task.key, query, keep)
        # An answer this query's model work cached meanwhile is known, but whether another chunk
        # got there first depends on the threads: such a row is decided as if uncached (it skips
        # the model if it goes there), so its chunk decides alike either way.
        known = {t: r for t, r in cached.items() if keys[t] in state.written}
        todo = sorted([*todo, *known], key=keys.get)
        for text, result in cached.items():
            if text not in known:
                deliver(text, {**result, "answered_by": "cache"})
        store = self.store if keep else None
        own = [_example(keys[t], t, spec, r, False) for t, r in cached.items() if t not in known]
        if store:
            store.add(model_id, task.key, own)     # answers from before agreement was asked for
        if not todo:
            return

        def settle(proxied: list[str]) -> None:
            """The proxy answered these of the call's rows: counted (but those the engine counted as
            cache hits, `known`), and their share kept for explain."""
            counted and counted(sum(t not in known for t in proxied))
            if store:
                store.record_share(model_id, task.key, len(proxied), len(todo))

        def model(texts: list[str], note: str | None, answers: dict | None = None, drawn: bool = False) -> None:
            """The model answers texts; each answer is delivered and kept as it finishes (drawn:
            the texts are the call's sample, or all of its rows left, not rows the proxy chose)."""
            def done(text: str, result: dict) -> None:
                example = _example(keys[text], text, spec, result, drawn)
                if answers is not None:
                    answers[text] = example
                state.written.add(keys[text])     # before the engine caches it: see `known`
                if store:
                    store.add(model_id, task.key, [example])
                if note:
                    result = {**result, "note": "; ".join(n for n in (result.get("note"), note) if n)}
                deliver(text, {**result, "answered_by": "model"})
            for text in texts:
                if text in known:
                    done(text, known[text])
            rest = [t for t in texts if t not in known]
            if rest:
                compute(rest, done)

        if len(spec.classes) == 1:      # the model can answer nothing else: agreement is certain
            for text in todo:
                deliver(text, {**spec.result_of(spec.classes[0], 1.0), "answered_by": "proxy"})
            settle(todo)
            return
        featurize = features.FEATURES[spec.features]
        before = state.before
        stored = set(before.keys)
        own = sorted(row for row in own if row.key not in stored)

        labeled = sum(before.drawn)     # the rows that can check the proxy: own rows are not drawn
        hash_key = sampling.key_of(spec.seed)
        draws = {t: sampling.draw(hash_key, t) for t in todo}
        first = bound.START * bound.fewest(spec.target, _alpha(spec, 0))
        # Looks: the sample grows (twice the labeled rows each time) until the proxy shows the
        # target or the whole call has gone to the model. Each look spends its own share of
        # alpha (_alpha), so stopping at the first that passes keeps the stated confidence.
        answers: dict[str, Example] = {}
        goal = max(WANT * first, labeled + AUDIT * len(todo))
        rate, fitted = 0.0, None
        for look in range(LOOKS):
            low, rate = rate, min(1.0, max(AUDIT, (goal * 2 ** look - labeled) / len(todo)))
            picked = [t for t in todo if low <= draws[t] < rate]
            if rate >= 1.0:     # no rows would be left for the proxy: the model answers them all
                note = (TOO_FEW.format(rows=f"{labeled + len(todo):,}", need=f"{round(goal):,}") if fitted is None
                        else NOT_REACHED.format(n=f"{fitted.held_out:,}", target=spec.target,
                                                confidence=spec.confidence))
                settle([])
                model(picked, note, drawn=True)
                return
            model(picked, None, answers, drawn=True)
            sampled = [answers[t] for t in todo if draws[t] < rate]
            pool = _joined(before, _labeled(sorted(own + sampled), featurize))
            if store:
                self._keep_vectors(spec, [row.text for row in own + sampled])
            folds = np.array([sampling.fold(hash_key, t, classifier.FOLDS) for t in pool.texts])
            rank = np.array([sampling.rank(hash_key, t) for t in pool.texts])
            fitted = classifier.fit(pool.X, pool.labels, folds, pool.drawn, spec.target, _alpha(spec, look), rank,
                                    np.array(pool.weights))
            if fitted.threshold is not None:
                break
        rest = [t for t in todo if draws[t] >= rate]
        if fitted.threshold is None:
            settle([])
            model(rest, NOT_REACHED.format(n=f"{fitted.held_out:,}", target=spec.target,
                                           confidence=spec.confidence), drawn=True)
            return
        if before.keys and _drifted(fitted, len(before.keys), spec):
            settle([])
            model(rest, DRIFTED.format(target=spec.target), drawn=True)
            return

        labels, scores = fitted.scores(featurize(rest), np.array([sampling.fold(hash_key, t, classifier.FOLDS)
                                                                  for t in rest]))
        confidence = fitted.confidence(scores)
        proxied, below = [], []
        for text, label, score, p in zip(rest, labels, scores, confidence):
            if score >= fitted.threshold:
                deliver(text, {**spec.result_of(label, float(p)), "answered_by": "proxy"})
                proxied.append(text)
            else:
                below.append(text)
        settle(proxied)
        if store:
            self._keep_vectors(spec, below)
        model(below, None)


def _alpha(spec: Agreement, look: int) -> float:
    """The error rate a look may spend: FIRST_LOOK of what the looks before it left, so all
    looks together spend less than alpha. Most goes to the first look, the only one a call
    needs once the task has stored examples."""
    return spec.alpha * FIRST_LOOK * (1 - FIRST_LOOK) ** look


def _drifted(fitted: classifier.Fitted, stored: int, spec: Agreement) -> bool:
    """The call's own drawn rows (after the stored ones) show, above the threshold, agreement
    surely below the target: the stored examples do not speak for this chunk."""
    mine = fitted.drawn.copy()
    mine[:stored] = False
    scores, agreed = fitted.held_out_scores[mine], fitted.held_out_agreed[mine]
    above = scores >= fitted.threshold
    n = int(above.sum())
    return n > 0 and bound.upper(int(agreed[above].sum()), n, spec.alpha) < spec.target
