"""Does a row's answer depend on the rows decoded beside it? One table from one run.

For each setting, the same fresh texts are labeled one row at a time (one row in flight) and all
together (DUCKLLM_PARALLEL rows in flight), and the two are compared: label flips and the largest
confidence difference (issue 3 asks for the same label and 1e-3), with rows/s for the batched run.
"batch-invariant" is duckllm's default on the CPU (runtime/device.py, CPU_MIN_BATCH); "llama.cpp's own
batches" is DUCKLLM_BATCH_INVARIANT=0.

    python bench/batch_invariance.py --rows 48 [--model qwen2.5-coder-1.5b] [--dataset banking77]
"""
from __future__ import annotations

import time

from _common import engine, model_path, parse, parser
from throughput import load_rows


def label_all(labeler, task, texts):
    """The texts labeled in one call, after one untimed row (the shared prompt); answers and seconds."""
    labeler.run(task, ["warm up"], use_cache=False)
    start = time.perf_counter()
    answers = labeler.run(task, texts, use_cache=False)
    return answers, time.perf_counter() - start


def main():
    ap = parser(__doc__, suite=None, dataset="banking77", model=None, rows=48)
    ap.add_argument("--parallel", type=int, default=64)
    args = parse(ap)
    from duckllm.tasks import classify

    texts, labels = load_rows(args)
    task = classify.build(labels)
    path = model_path(args.model)
    print(f"model {path.name}, dataset {args.dataset}, {args.rows} rows, {len(labels)} labels, "
          f"{args.parallel} rows in flight when batched\n")
    print("| batches | label flips | max confidence difference | batched rows/s | one-at-a-time rows/s |")
    print("|---|---:|---:|---:|---:|")
    for k, (name, invariant) in enumerate([("batch-invariant (default)", True), ("llama.cpp's own", False)]):
        rows = texts[k * args.rows:(k + 1) * args.rows]       # fresh texts for each setting
        results = []
        for parallel in (1, args.parallel):
            labeler = engine(path, parallel=parallel, batch_invariant=invariant)
            results.append(label_all(labeler, task, rows))
            labeler.runtime().close()
        (alone, alone_s), (batched, batched_s) = results
        flips = sum(a["label"] != b["label"] for a, b in zip(alone, batched))
        diff = max(abs(a["confidence"] - b["confidence"]) for a, b in zip(alone, batched))
        print(f"| {name} | {flips} | {diff:.1e} | {len(rows) / batched_s:.2f} | {len(rows) / alone_s:.2f} |")


if __name__ == "__main__":
    main()
