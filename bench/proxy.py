"""The learned proxy (issue 18) on the default model's own answers, saved once by
bench/proxy_answers.py: how many rows it takes at each agreement target, how often it agrees with
the model there, what that does to accuracy, and what it costs, all in one run.

    python bench/proxy.py --datasets ag_news --features embedding,text --model-rows 500

The saved rows are a random sample of the column in a random order. They are replayed through
duckllm's engine, in chunks of 2,048 rows as DuckDB hands them over, by a runtime that answers each
row with the model's saved answer: the proxy's every step (sampling, training, the bound, the
example store) is the production code, and only the model's time is not spent again: it is
measured on a sample of the same column in the same run (--model-rows 500), as is the
embedder's. Speed-ups are wall time on this machine: the model's rows, plus the cascade's own
work. --answers gold replays the gold labels instead,
a stand-in for a model's answers on the whole column (the proxy's cost and learning curve at a
scale no CPU model run here reaches).

Tables: (1) share, agreement with the model, accuracy and speed per target, for a query's
chunks on several DuckDB threads ('query': each learns from the examples stored when the query
began) and on one ('free': each also learns from the chunks before it); (2) agreement over seeds;
(3) the learning curve: the share the proxy takes with n stored answers; (4) features: n-grams,
sentence embeddings, both; (6) a warm-up query over a sample first; (5) what a 100,000-row
column would take.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import proxy_answers

from duckllm.engine import Engine, models
from duckllm.engine.cache import ResultCache, key_of
from duckllm.engine.stats import STATS
from duckllm.prompt_format import FORMATS
from duckllm.proxy import cascade, classifier, sampling
from duckllm.proxy import features as proxy_features
from duckllm.proxy.examples import Example, ExampleStore
from duckllm.proxy.features import FEATURES
from duckllm.runtime import Answer, Choice, Usage, embed
from duckllm.settings import Settings
from duckllm.store import ModelStore, catalog

CHUNK = 2048            # DuckDB's vector size: the rows one UDF call gets
GPU_ROWS_PER_S = 300    # the default model's class on the H200 (docs/gpu.md), for the cost beside it


class Replay:
    """A runtime that answers each row with the model's saved answer, instantly."""

    def __init__(self, answers: dict[str, tuple[str, float]]):
        self.answers = answers
        self.format = FORMATS["chatml"]
        self.usage = Usage()

    def run(self, prompt, texts, program, answer_tokens, on_done=None, row_prefixes=None):
        out = []
        for i, text in enumerate(texts):
            steps = program(i, len(text.split()))
            pick = next(steps)
            label, confidence = self.answers[str(text)]
            logp = math.log(max(confidence, 1e-12))
            try:
                steps.send(Choice(pick.options.index(label), [logp], logp))
            except StopIteration as stop:
                out.append(Answer(stop.value))
            if on_done:
                on_done(i, out[-1])
        return out

    def describe(self):
        return {"device": "replay"}


@dataclasses.dataclass
class Column:
    name: str
    texts: list[str]
    gold: list[str]
    model: list[str]                 # the model's answers (or gold, with --answers gold)
    confidence: list[float]
    labels: list[str]
    model_s_per_row: float           # measured when the answers were saved


def load(suite: Path, name: str, model: str, answers: str, rows: int | None) -> Column:
    column, labels = proxy_answers.column(suite, name)
    if answers == "gold":
        saved = [{**r, "label": r["gold"], "confidence": 1.0, "seconds": float("nan")} for r in column]
    else:
        saved = proxy_answers.load(model, name)
        if not saved:
            raise SystemExit(f"no saved answers for {name}: run bench/proxy_answers.py --datasets {name} first")
    saved = saved[:rows] if rows else saved
    seconds = [r["seconds"] for r in saved if not math.isnan(r["seconds"])]
    return Column(name, [r["text"] for r in saved], [r["gold"] for r in saved], [r["label"] for r in saved],
                  [r["confidence"] for r in saved], labels, statistics.median(seconds) if seconds else float("nan"))


def task_for(column: Column, model: str, target: float, seed: int = 0, features: str = "text"):
    task = proxy_answers.task_for(column.name, column.labels, model, agreement=target)
    return dataclasses.replace(task, agreement=dataclasses.replace(task.agreement, seed=seed, features=features))


class Memo:
    """Features computed once per text for the whole run: the bench replays a column many times,
    so each replay's feature time is taken from a measurement in this run (seconds_per_row:
    wall seconds on this machine's cores, as the engine spends them) instead."""

    def __init__(self):
        self.rows: dict[str, dict[str, int]] = {}
        self.X: dict[str, object] = {}
        self.seconds_per_row: dict[str, float] = {}

    def prepare(self, name: str, texts: list[str]) -> None:
        if name in self.X:
            return
        if name == "text+embedding":     # the two parts, each computed once
            self.prepare("text", texts)
            self.prepare("embedding", texts)
            self.X[name] = sparse.hstack([self.X["text"], self.X["embedding"]], format="csr")
            self.seconds_per_row[name] = self.seconds_per_row["text"] + self.seconds_per_row["embedding"]
        elif name == "embedding":       # slow here: kept on disk (bench/out/proxy/embeddings)
            self.X[name] = _embeddings(texts)
            self.seconds_per_row[name] = _embedder_seconds_per_row(texts)
        else:
            wall = time.perf_counter()
            self.X[name] = ORIGINAL[name](texts)
            self.seconds_per_row[name] = (time.perf_counter() - wall) / len(texts)
        self.rows[name] = {t: i for i, t in enumerate(texts)}

    def install(self) -> None:
        for name in list(self.X):
            FEATURES[name] = self._lookup(name)

    def _lookup(self, name: str):
        return lambda texts: self.X[name][[self.rows[name][t] for t in texts]]


TIMED_ROWS = 300     # texts embedded afresh to time the embedder in this run


def _embedder_seconds_per_row(texts: list[str]) -> float:
    """The embedder's wall seconds per text here and now, as the proxy runs it (all cores)."""
    sample = texts[-TIMED_ROWS:]
    ORIGINAL["embedding"](sample[:10])          # loads the embedder
    proxy_features._embedded.clear()
    wall = time.perf_counter()
    ORIGINAL["embedding"](sample)
    return (time.perf_counter() - wall) / len(sample)


def _embeddings(texts: list[str]):
    """The texts' embeddings, each computed once and kept on disk
    (bench/out/proxy/embeddings/<the embedder's identity>/*.npz), to spare the runs' time."""
    made_by = embed.identity(**proxy_features.EMBEDDER)
    folder = proxy_answers.OUT / "embeddings" / hashlib.sha256(made_by.encode()).hexdigest()[:16]
    known = {}
    for path in sorted(folder.glob("*.npz")):
        saved = np.load(path, allow_pickle=False)
        known.update(zip(saved["texts"].tolist(), saved["vectors"]))
    missing = sorted(set(texts) - set(known))
    if missing:
        vectors = ORIGINAL["embedding"](missing).toarray()
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256("\x00".join(missing).encode()).hexdigest()[:16]
        np.savez(folder / f"{digest}.npz", texts=np.array(missing), vectors=vectors)
        known.update(zip(missing, vectors))
    return sparse.csr_matrix(np.vstack([known[t] for t in texts]))


MEMO = Memo()
ORIGINAL = dict(FEATURES)


@dataclasses.dataclass
class Replayed:
    results: list[dict]
    seconds: float          # the cascade's own wall time, with the features' at the rate measured
    drawn: list[int]        # drawn examples stored after each chunk


def replay(column: Column, task, warmup: int = 0, learning: str = "query", stored: int = 0,
           rows: int | None = None) -> Replayed:
    """The column through the engine in DuckDB-sized chunks.
    warmup: a query over the column's first rows (a random sample: the column is shuffled)
    runs first, and the query over the rest starts from the answers it stored. learning 'query':
    the chunks of a named query, as on several DuckDB threads; 'free': unnamed, as on one.
    stored: the first rows' answers are put in the example store as drawn rows instead, and only
    the next `rows` rows are replayed (the learning curve)."""
    runtime = Replay({t: (m, c) for t, m, c in zip(column.texts, column.model, column.confidence)})
    models.register("replay", lambda settings: runtime)
    task = dataclasses.replace(task, model="replay")
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(Settings.from_env(model="replay", progress=False),
                        cache=ResultCache(Path(tmp) / "cache.sqlite"))
        if stored:
            identity = engine.model("replay").identity
            ExampleStore(engine.cache).add(identity, task.key, [       # weighed as the cascade weighs them
                Example(key_of(identity, task.key, t), t, m, True, cascade.weight_of({"confidence": c}))
                for t, m, c in zip(column.texts[:stored], column.model, column.confidence)])
        STATS.reset()
        wall = time.perf_counter()
        results, drawn = [], []
        db = engine.cache.connection()
        end = len(column.texts) if rows is None else min(len(column.texts), stored + rows)
        for query, (begin, stop) in enumerate([(stored, stored + warmup), (stored + warmup, end)]):
            for start in range(begin, stop, CHUNK):
                results += engine.run(task, column.texts[start:min(start + CHUNK, stop)],
                                      query=None if learning == "free" else f"bench {query}")
                drawn.append(db.execute("SELECT count(*) FROM proxy_examples WHERE drawn = 1").fetchone()[0])
        # features were memoised: add what computing them once per row takes
        extra = MEMO.seconds_per_row.get(task.agreement.features, 0.0) * (end - stored)
        return Replayed(results, time.perf_counter() - wall + extra, drawn)


def summary(column: Column, results: list[dict], seconds: float) -> dict:
    """Share, agreement and accuracy; speed from the model's measured rate and the cascade's
    own seconds (the proxy's work: features, training, the bound, the example store)."""
    by = np.array([r["answered_by"] for r in results])
    labels = np.array([r["label"] for r in results], dtype=object)
    model, gold = np.array(column.model, dtype=object), np.array(column.gold, dtype=object)
    proxied = by == "proxy"
    n, p = len(results), int(proxied.sum())
    model_time = (n - p) * column.model_s_per_row + seconds
    return {"rows": n, "proxy": p, "share": p / n,
            "agreement": float((labels[proxied] == model[proxied]).mean()) if p else float("nan"),
            "accuracy_model": float((model == gold).mean()), "accuracy": float((labels == gold).mean()),
            "proxy_rows_per_s": n / seconds if seconds else float("inf"),
            "speedup": n * column.model_s_per_row / model_time if model_time else float("nan")}


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    if not rows:
        print("(no rows)")
        return
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(_fmt(v).rjust(w) for v, w in zip(r, widths)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def cascade_table(columns, model, targets, features) -> None:
    rows = []
    for column in columns:
        for target in targets:
            for learning, kind in [(learning, kind) for kind in features for learning in ("query", "free")]:
                run = replay(column, task_for(column, model, target, features=kind), learning=learning)
                s = summary(column, run.results, run.seconds)
                rows.append([column.name, target, f"{learning} {kind}", s["rows"], s["proxy"], s["share"],
                             s["agreement"], s["accuracy_model"], s["accuracy"], s["proxy_rows_per_s"], s["speedup"]])
    table("(1) the proxy on the model's answers, replayed in 2,048-row chunks: 'query' learns from the "
          "examples stored when the query began and the chunk's own sample (several DuckDB threads); 'free' "
          "from every answer stored so far, the chunks before it included (one thread: SET threads = 1)",
          ["dataset", "target", "learning features", "rows", "proxy rows", "share", "agreement", "acc model",
           "acc cascade", "proxy rows/s", "x model alone"], rows)


def seeds_table(columns, model, targets, seeds, features) -> None:
    rows = []
    for column in columns:
        for target, learning in [(target, learning) for target in targets for learning in ("query", "free")]:
            agreements, shares, speedups = [], [], []
            for seed in range(seeds):
                run = replay(column, task_for(column, model, target, seed=seed, features=features), learning=learning)
                s = summary(column, run.results, run.seconds)
                shares.append(s["share"])
                agreements.append(s["agreement"])
                speedups.append(s["speedup"])
            answered = [a for a in agreements if not math.isnan(a)]
            below = sum(a < target for a in answered)
            rows.append([column.name, target, learning, seeds, len(answered), below,
                         min(answered, default=float("nan")),
                         statistics.mean(answered) if answered else float("nan"), statistics.mean(shares),
                         statistics.mean(speedups)])
    table("(2) over seeds (which rows are sampled): runs in which the proxy answered, and in how many of "
          "those its agreement with the model fell below the target (the stated confidence allows 5%)",
          ["dataset", "target", "learning", "seeds", "runs with proxy", "below target", "lowest", "mean agreement",
           "mean share", "mean x model alone"], rows)


def learning_curve(columns, model, targets, steps, features) -> dict:
    """The share of a 2,048-row call (or of the column's rows left) the proxy takes when n of the
    model's answers are stored (all drawn), its 5% audit included; beside it, the ceiling: the
    share the same classifier, trained on the n answers, could take at the target if the best
    threshold for the call's rows were known. Returns {(column, target): [(n, share), ...]}."""
    rows, curves = [], {}
    key = sampling.key_of(0)
    for column in columns:
        X = FEATURES[features](column.texts)
        folds = np.array([sampling.fold(key, t, classifier.FOLDS) for t in column.texts])
        for n in steps:
            if n + min(CHUNK, len(column.texts) // 2) > len(column.texts):
                break
            row = [column.name, n]
            for target in targets:
                run = replay(column, task_for(column, model, target, features=features), stored=n, rows=CHUNK)
                part = slice(n, n + len(run.results))
                s = summary(dataclasses.replace(column, texts=column.texts[part], gold=column.gold[part],
                                                model=column.model[part]), run.results, 0.0)
                curves.setdefault((column.name, target), []).append((n, s["share"]))
                row += [s["share"], s["agreement"], _ceiling(X, column, folds, n, part, target)]
            rows.append(row)
    table("(3) learning curve: the share of a 2,048-row call the proxy takes, and its agreement there, with n of "
          f"the model's answers stored ({features} features; the call's 5% audit included); 'best': the share "
          "the best threshold for the call's rows would take, known in hindsight",
          ["dataset", "n answers", *[f"{h} {t}" for t in targets for h in ("share", "agree", "best")]], rows)
    return curves


def _ceiling(X, column, folds, n: int, part: slice, target: float) -> float:
    """The most of the rows in `part` a proxy trained on the first n answers (weighed as the
    cascade weighs them) could take with agreement >= target: its highest-scoring rows, as many
    as keep the agreement."""
    if n == 0:      # nothing to train on before the call's own sample
        return float("nan")
    answers = column.model
    weights = np.array([cascade.weight_of({"confidence": c}) for c in column.confidence[:n]])
    fitted = classifier.fit(X[:n], answers[:n], folds[:n], np.ones(n, bool), target, 0.05, weights=weights)
    labels, scores = fitted.scores(X[part], folds[part])
    agreed = np.array(labels, dtype=object) == np.array(answers[part], dtype=object)
    agreed = agreed[np.argsort(-scores, kind="stable")]
    fine = np.flatnonzero(np.cumsum(agreed) >= target * np.arange(1, len(agreed) + 1))
    return (fine.max() + 1) / len(agreed) if len(fine) else 0.0


def features_table(columns, n_train: int, target: float) -> None:
    rows = []
    key = sampling.key_of(0)
    for column in columns:
        n = min(n_train, len(column.texts) // 2)
        folds = np.array([sampling.fold(key, t, classifier.FOLDS) for t in column.texts])
        for name in ("text", "embedding", "text+embedding"):
            X = FEATURES[name](column.texts)
            wall = time.perf_counter()
            fitted = classifier.fit(X[:n], column.model[:n], folds[:n], np.ones(n, bool), target, 0.05)
            labels, scores = fitted.scores(X[n:], folds[n:])
            seconds = time.perf_counter() - wall + MEMO.seconds_per_row[name] * len(column.texts)
            agree = np.array(labels, dtype=object) == np.array(column.model[n:], dtype=object)
            above = scores >= fitted.threshold if fitted.threshold is not None else np.zeros(len(scores), bool)
            rows.append([column.name, name, n, float(agree.mean()), float(above.mean()),
                         float(agree[above].mean()) if above.any() else float("nan"),
                         1 / MEMO.seconds_per_row[name], len(column.texts) / seconds])
    table(f"(4) features: the proxy's agreement with the model on new rows after {n_train} answers, the share "
          f"it takes at {target}, and its cost (rows per wall second: features alone, and features + training on "
          f"{n_train} + prediction for the column)",
          ["dataset", "features", "trained on", "agreement", f"share {target}", "agreement there",
           "features rows/s", "all rows/s"], rows)


def warmup_table(columns, model, targets, warmups, features) -> None:
    rows = []
    for column in columns:
        for target in targets:
            for warmup in warmups:
                if warmup >= len(column.texts) // 2:
                    continue
                run = replay(column, task_for(column, model, target, features=features), warmup)
                s = summary(column, run.results, run.seconds)
                rest = [r["answered_by"] == "proxy" for r in run.results[warmup:]]
                rows.append([column.name, target, warmup, s["rows"], sum(rest) / len(rest), s["share"],
                             s["agreement"], s["accuracy"], s["speedup"]])
    table("(6) a warm-up query over a random sample first (SELECT ... USING SAMPLE), then the column's other rows: "
          f"the second query starts from the answers the first stored ({features} features, deterministic)",
          ["dataset", "target", "warm-up rows", "rows", "share after", "share overall", "agreement",
           "acc cascade", "x model alone"], rows)


def projection(columns, model, targets, total: int, features: str, curves: dict) -> None:
    """A column of `total` rows like the replayed one, on one DuckDB thread: chunk by chunk, the
    share is the learning curve's at the most drawn rows stored by then (the first call's sample,
    then each call's 5% audit), never past the curve's last measured point. The training rows
    of a real run (every model answer) outnumber the drawn ones, so this is the low side."""
    rows = []
    for column in columns:
        for target in targets:
            curve = curves.get((column.name, target))
            if not curve:
                continue
            run = replay(column, task_for(column, model, target, features=features), learning="free")
            first = run.results[:CHUNK]
            drawn = run.drawn[0]        # the first call's sample
            per_row_proxy = run.seconds / len(run.results)
            seconds, done, shares = 0.0, 0, []
            while done < total:
                n = min(CHUNK, total - done)
                share = (sum(r["answered_by"] == "proxy" for r in first) / len(first) if done == 0 else
                         [s for k, s in curve if k <= drawn][-1])
                shares.append(share)
                seconds += n * ((1 - share) * column.model_s_per_row + per_row_proxy)
                drawn += round(cascade.AUDIT * n)
                done += n
            alone = total * column.model_s_per_row
            rows.append([column.name, target, shares[1] if len(shares) > 1 else shares[0], shares[-1],
                         alone / 3600, seconds / 3600, alone / seconds, GPU_ROWS_PER_S * per_row_proxy])
    rates = ", ".join(f"{c.name} {1 / c.model_s_per_row:.2f} rows/s" for c in columns)
    table(f"(5) a {total:,}-row column like it, one DuckDB thread, {features} features: each chunk at the learning "
          f"curve's share for the drawn rows stored by then (model {rates}); "
          f"the last column: the proxy's seconds here (2 cores) per second of a GPU model at {GPU_ROWS_PER_S} rows/s",
          ["dataset", "target", "share 2nd chunk", "share last", "model alone h", "cascade h", "x",
           "proxy s per GPU s"], rows)


def model_seconds_per_row(column: Column, model: str, rows: int) -> float:
    """The model alone, here and now: `rows` rows of the column (its saved order is random) in
    one call, as DuckDB hands a chunk over, the result cache off. A one-row call first loads the
    model and evaluates the shared prompt, as a long query's first chunk does once."""
    engine = Engine(Settings.from_env(model=model, progress=False))
    task = proxy_answers.task_for(column.name, column.labels, model)
    sample = column.texts[-rows:]
    engine.run(task, sample[:1], use_cache=False)
    wall = time.perf_counter()
    engine.run(task, sample[1:], use_cache=False)
    return (time.perf_counter() - wall) / (len(sample) - 1)


def main() -> None:
    parser = _common.parser(__doc__, suite=None, model=catalog.DEFAULT_MODEL, datasets="ag_news,sms_spam")
    parser.add_argument("--answers", choices=("model", "gold"), default="model")
    parser.add_argument("--rows", type=int, help="the first N saved rows only")
    parser.add_argument("--targets", default="0.9,0.95,0.99")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--model-rows-per-s", type=float, help="instead of the rate measured when saving")
    parser.add_argument("--model-rows", type=int, default=0,
                        help="measure the model alone on this many of the column's rows first (500: minutes)")
    parser.add_argument("--projection", type=int, default=100_000)
    parser.add_argument("--skip", default="", help="tables to leave out, e.g. 2,4")
    parser.add_argument("--features", default="text,text+embedding",
                        help="the proxy's features to compare in (1); the first is used for (2), (3) and (5)")
    args = _common.parse(parser)
    embed.keep_in(ModelStore(Settings.from_env().home))     # where the proxy's embedder is found
    targets = [float(t) for t in args.targets.split(",")]
    columns = [load(args.suite, name, args.model, args.answers, args.rows) for name in args.datasets.split(",")]
    for c in columns:
        if args.model_rows:
            c.model_s_per_row = model_seconds_per_row(c, args.model, args.model_rows)
        elif args.model_rows_per_s:
            c.model_s_per_row = 1 / args.model_rows_per_s
        print(f"{c.name}: {len(c.texts):,} rows ({args.answers} answers), model accuracy "
              f"{np.mean(np.array(c.model) == np.array(c.gold)):.3f}, model {1 / c.model_s_per_row:.2f} rows/s")
    skip = set(args.skip.split(","))
    features = args.features.split(",")
    for name in features + ([] if "4" in skip else ["text", "embedding", "text+embedding"]):
        MEMO.prepare(name, [t for c in columns for t in c.texts])
    MEMO.install()
    "4" in skip or features_table(columns, 400, 0.95)
    "1" in skip or cascade_table(columns, args.model, targets, features)
    "2" in skip or seeds_table(columns, args.model, [0.9, 0.95], args.seeds, features[0])
    curves = {} if "3" in skip else learning_curve(columns, args.model, targets, [0, 200, 400, 800, 1600, 3200, 6400],
                                                   features[0])
    "6" in skip or warmup_table(columns, args.model, [t for t in targets if t != 0.99], [500, 1000],
                                features[0])
    "5" in skip or projection(columns, args.model, [t for t in targets if t != 0.99], args.projection, features[0],
                              curves)


if __name__ == "__main__":
    main()
