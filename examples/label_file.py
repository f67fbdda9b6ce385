"""Label a column of a CSV or Parquet file from Python and write labeled Parquet plus a plot.

    python examples/label_file.py examples/tickets.csv --column text \
        --labels refund,delivery,account,card_lost --out labeled.parquet

The labels and confidences come from duckllm's llm_classify inside one DuckDB query; rows the
model is unsure of are listed for review. Reruns come from the result cache.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import duckllm


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path, help="a .csv or .parquet file")
    ap.add_argument("--column", required=True, help="the text column to label")
    ap.add_argument("--labels", required=True, help="comma-separated labels")
    ap.add_argument("--out", type=Path, default=Path("labeled.parquet"))
    ap.add_argument("--model", help="catalog name or .gguf path (default: the default model)")
    ap.add_argument("--review-below", type=float, default=0.7)
    args = ap.parse_args(argv)

    con = duckllm.connect(model=args.model)
    reader = "read_parquet" if args.input.suffix == ".parquet" else "read_csv"
    con.execute(f"""CREATE TABLE labeled AS
        SELECT *, llm_classify("{args.column}", $labels) AS result FROM {reader}($path)""",
                {"labels": args.labels.split(","), "path": str(args.input)})
    con.execute("COPY (SELECT * EXCLUDE (result), result.label, result.confidence FROM labeled) "
                "TO $out (FORMAT parquet)", {"out": str(args.out)})
    counts = con.execute("""SELECT result.label, count(*), avg(result.confidence) FROM labeled
                            GROUP BY ALL ORDER BY 2 DESC""").fetchall()
    for label, n, confidence in counts:
        print(f"{label or '(no answer)':<16} {n:>5} rows  mean confidence {confidence or 0:.2f}")
    review = con.execute("SELECT count(*) FROM llm_review_queue('labeled', 'result', threshold := $t)",
                         {"t": args.review_below}).fetchone()[0]
    print(f"{review} rows below {args.review_below} confidence to review; wrote {args.out}")
    plot(con, args.out.with_suffix(".png"))


def plot(con, path: Path) -> None:
    """Rows per label, and each label's confidence spread."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = con.execute("""SELECT result.label, list(result.confidence) FROM labeled
                          WHERE result.label IS NOT NULL GROUP BY ALL ORDER BY count(*) DESC""").fetchall()
    labels, confidences = [r[0] for r in rows], [r[1] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(labels, [len(c) for c in confidences])
    left.set(title="rows per label")
    right.boxplot(confidences, tick_labels=labels)
    right.set(title="confidence per label", ylim=(0, 1))
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
