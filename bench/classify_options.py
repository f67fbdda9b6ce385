"""llm_classify's options measured on public data: few-shot examples (all, or the nearest k by
embedding), label preselection for large label sets, and the small-to-strong confidence cascade.

    python bench/classify_options.py --limit 100

Few-shot pools come from the public part's rows outside the scored sample (same seed).
Reads the suite at run time (--suite, default ../shared/data); copies none of its rows.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from _common import connect, parse, parser

from duckllm.evaluation.datasets import SEED, Dataset, shuffled


def dataset(root: Path, name: str, limit: int, pool: int):
    """The first `limit` rows of a fixed-seed order, the `pool` after them, and the labels."""
    data = Dataset.open(root, name)
    rows = shuffled(data.rows())
    return rows[:limit], rows[limit:limit + pool], data.labels


def score(con, rows, labels, **options):
    """Accuracy, rows/s and the answers of llm_classify with the given options (SQL parameters)."""
    con.execute("CREATE OR REPLACE TABLE t AS SELECT unnest($x) AS text, generate_subscripts($x, 1) AS i",
                {"x": [r["text"] for r in rows]})
    named = "".join(f", {k} := ${k}" for k in options)
    start = time.perf_counter()
    got = con.execute(f"SELECT llm_classify(text, $labels{named}) FROM t ORDER BY i",
                      {"labels": labels, **options}).fetchall()
    seconds = time.perf_counter() - start
    answers = [g[0] for g in got]
    accuracy = sum(a["label"] == r["label"] for a, r in zip(answers, rows)) / len(rows)
    return accuracy, len(rows) / seconds, answers


def main():
    ap = parser(__doc__, suite=None, model="qwen2.5-coder-1.5b", limit=100)
    ap.add_argument("--small", default="qwen2.5-coder-0.5b", help="the cascade's first model")
    ap.add_argument("--parts", default="few_shot,preselect,cascade")
    args = parse(ap)
    con = connect(args.model, cache=False)
    con.execute("SELECT llm_classify('warm up', ['a', 'b'])").fetchall()
    table = []

    def report(*row):
        table.append(row)
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |",
              file=sys.stderr, flush=True)

    parts = args.parts.split(",")
    if "few_shot" in parts:
        rows, pool, labels = dataset(args.suite, "sms_spam", args.limit, 200)
        desc = Dataset.open(args.suite, "sms_spam").descriptions
        examples = [{"input": r["text"], "output": r["label"]} for r in pool]
        balanced = [e for e in examples if e["output"] == "spam"][:4] + [e for e in examples if e["output"] == "ham"][:4]
        for name, options in [("zero-shot, descriptions", {"descriptions": desc}),
                              ("8 fixed examples", {"descriptions": desc, "examples": balanced}),
                              ("nearest 4 of 200 examples", {"descriptions": desc, "examples": examples, "nearest": 4})]:
            accuracy, rate, _ = score(con, rows, labels, **options)
            report("sms_spam", name, len(rows), accuracy, rate)
    if "preselect" in parts:
        rows, _, labels = dataset(args.suite, "banking77", args.limit, 0)
        for name, options in [("all 77 labels", {}), ("preselect 16 by embedding", {"preselect": 16}),
                              ("preselect 8 by embedding", {"preselect": 8})]:
            accuracy, rate, _ = score(con, rows, labels, **options)
            report("banking77", name, len(rows), accuracy, rate)
    if "cascade" in parts:
        rows, _, labels = dataset(args.suite, "ag_news", args.limit, 0)
        strong_acc, strong_rate, strong = score(con, rows, labels)
        report("ag_news", f"{args.model} alone", len(rows), strong_acc, strong_rate)
        small_acc, small_rate, small = score(con, rows, labels, model=args.small)
        report("ag_news", f"{args.small} alone", len(rows), small_acc, small_rate)
        # thresholds at the small model's confidence quartiles: a quarter, half, three quarters sent on
        ranked = sorted(s["confidence"] for s in small)
        thresholds = [ranked[int(q * len(ranked))] for q in (0.25, 0.5, 0.75)]
        for below in thresholds:
            # from the two runs above: what the cascade macro answers, and how many rows it sends on
            sent = [s["confidence"] < below for s in small]
            picked = [t if go else s for s, t, go in zip(small, strong, sent)]
            accuracy = sum(p["label"] == r["label"] for p, r in zip(picked, rows)) / len(rows)
            report("ag_news", f"cascade below {below:.3f}: {sum(sent)} rows sent on", len(rows), accuracy, "-")
        # the macro itself, cold, with a result cache of its own (its THEN branch reads the
        # small model's answers from it): same answers as composed above, and its real speed
        below = thresholds[1]
        con = connect(args.model, cache=Path(tempfile.mkdtemp()) / "cache.sqlite")   # the models stay loaded
        con.execute("CREATE TABLE t AS SELECT unnest($x) AS text, generate_subscripts($x, 1) AS i",
                    {"x": [r["text"] for r in rows]})
        start = time.perf_counter()
        got = [g[0] for g in con.execute(
            "SELECT llm_classify_cascade(text, $labels, $small, $strong, below := $below) FROM t ORDER BY i",
            {"labels": labels, "small": args.small, "strong": args.model, "below": below}).fetchall()]
        rate = len(rows) / (time.perf_counter() - start)
        sent = [s["confidence"] < below for s in small]
        same = sum(g["label"] == (t if go else s)["label"] for g, s, t, go in zip(got, small, strong, sent))
        accuracy = sum(g["label"] == r["label"] for g, r in zip(got, rows)) / len(rows)
        report("ag_news", f"llm_classify_cascade macro, below {below:.3f} ({same}/{len(rows)} as composed)",
               len(rows), accuracy, rate)
    print(f"model {args.model}, {args.limit} rows per dataset, seed {SEED}")
    print("| dataset | variant | rows | accuracy | rows/s |\n|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
