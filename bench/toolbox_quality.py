"""Quality of every duckllm function on the public suite, next to the same model in free text.

    python bench/toolbox_quality.py --model qwen2.5-coder-1.5b --limit 40 --baseline

Per dataset: the matching function (see duckllm/suite.py), accuracy (F1 where the task calls for
it), invalid answers, confidence AUROC and rows/s; --baseline adds the model asked in free text.
Reads the suite at run time (--suite, default ../shared/data); copies none of its rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from duckllm import store, suite
from duckllm.engine import Engine

DEFAULT_SUITE = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = "walmart_amazon,abt_buy,ae_110k,oa_mine,wdc_pave,conll2003,restaurant8k,hospital"
COLUMNS = ("dataset", "function", "method", "rows", "accuracy", "f1", "invalid", "auroc", "rows_per_s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--limit", type=int, default=40, help="ids sampled per dataset")
    ap.add_argument("--baseline", action="store_true", help="also ask in free text (slow)")
    ap.add_argument("--json", type=Path, help="write the table's rows here too")
    args = ap.parse_args()
    os.environ["DUCKLLM_CACHE"] = "off"   # measure the model, not the result cache
    if not (args.suite / "datasets.json").exists():
        sys.exit(f"no suite at {args.suite}; pass --suite DIR holding datasets.json")
    engine = Engine(args.model)
    baseline = suite.FreeText(store.resolve(args.model)) if args.baseline else None
    rows = []
    for name in args.datasets.split(","):
        for result in suite.run_dataset(engine, args.suite, name, args.limit, baseline):
            rows.append(result.row())
            print(_fmt(rows[-1]), file=sys.stderr, flush=True)
    print(f"model {args.model}, {args.limit} ids per dataset, seed {suite.SEED}")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print(_fmt(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _fmt(row: dict) -> str:
    cells = (row[c] for c in COLUMNS)
    return "| " + " | ".join("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |"


if __name__ == "__main__":
    main()
