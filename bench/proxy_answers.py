"""The default model's own answers to a random sample of a public column, saved once for
bench/proxy.py (bench/out/proxy/<model>/<dataset>.jsonl, git-ignored). Resumable: rows already
saved are skipped, and the result cache answers rows a killed run finished.

    nice -n 5 python bench/proxy_answers.py --datasets ag_news,sms_spam --rows 800

The sample is the column shuffled with the suite's seed: its first N rows are a random sample
for every N, so a longer run extends a shorter one. Reads the suite at run time; the saved
files stay out of the repository.
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

from duckllm.engine import Engine
from duckllm.engine.cache import ResultCache
from duckllm.evaluation import datasets
from duckllm.evaluation.datasets import DESCRIPTIONS, SEED
from duckllm.settings import Settings
from duckllm.store import catalog
from duckllm.tasks import classify

OUT = Path(__file__).resolve().parent / "out" / "proxy"


def column(suite_dir: Path, name: str) -> tuple[list[dict], list[str]]:
    """The dataset's distinct texts with their gold labels, in a seeded random order."""
    spec = datasets.manifest(suite_dir)[name]
    seen, rows = set(), []
    for r in datasets.read_rows(suite_dir, spec):
        if r["text"] not in seen:
            seen.add(r["text"])
            rows.append({"text": r["text"], "gold": r["label"]})
    random.Random(SEED).shuffle(rows)
    return rows, datasets.labels_of(suite_dir, spec)


def task_for(name: str, labels: list[str], model: str, **options):
    """llm_classify as the suite asks it of this dataset (sms_spam's labels get descriptions)."""
    if name in DESCRIPTIONS:
        options["descriptions"] = DESCRIPTIONS[name]
    return classify.build(labels, {"model": model, **options})


def saved_path(model: str, name: str) -> Path:
    return OUT / _common.model_path(model).stem / f"{name}.jsonl"


def load(model: str, name: str) -> list[dict]:
    path = saved_path(model, name)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(suite_dir: Path, name: str, rows: int, model: str, chunk: int) -> None:
    column_rows, labels = column(suite_dir, name)
    path = saved_path(model, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {r["text"] for r in load(model, name)}
    todo = [r for r in column_rows[:rows] if r["text"] not in done]
    engine = Engine(Settings.from_env(model=model, progress=False), cache=ResultCache(OUT / "answers-cache.sqlite"))
    task = task_for(name, labels, model)
    print(f"{name}: {len(done)} saved, {len(todo)} to answer", flush=True)
    with path.open("a") as out:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            began = time.perf_counter()
            results = engine.run(task, [r["text"] for r in part], use_cache=True)
            seconds = (time.perf_counter() - began) / len(part)
            for r, result in zip(part, results):
                out.write(json.dumps({**r, "label": result["label"], "confidence": result["confidence"],
                                      "seconds": seconds}, ensure_ascii=False) + "\n")
            out.flush()
            print(f"{name}: {len(done) + start + len(part)} rows, {1 / seconds:.2f} rows/s", flush=True)


def main() -> None:
    parser = _common.parser(__doc__, suite=None, model=catalog.DEFAULT_MODEL, datasets="ag_news,sms_spam", rows=800)
    parser.add_argument("--chunk", type=int, default=32)
    args = _common.parse(parser)
    for name in args.datasets.split(","):
        collect(args.suite, name, args.rows, args.model, args.chunk)


if __name__ == "__main__":
    main()
