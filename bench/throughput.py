"""Throughput of llm_classify against a naive loop, in one run, on fresh texts.

Phases (same model, same labels, same instructions; the naive loop and duckllm each start after one
untimed row, so both measure a long column's pace, not the label prompt's one-time evaluation):
  naive       llama-cpp-python chat completion per row (its own process, so RSS is its own)
  cold        duckllm over N distinct texts, empty result cache
  10%-distinct  N rows holding N/10 distinct texts not seen before
  warm        the cold query again (answers from the cache)
The prompt-eval limit is the distinct rows' text tokens over the model's prompt-eval tokens/s
(measured here on a 512-token batch): no labeler can beat it without skipping text.

    python bench/throughput.py --rows 200 [--model qwen2.5-coder-1.5b] [--dataset banking77]
"""
from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import resource
import tempfile
import time
from pathlib import Path

from _common import connect, dataset, model_path, parse, parser

from duckllm.evaluation.datasets import shuffled


def load_rows(args):
    """The dataset's texts in a fixed-seed order (fresh texts follow any prefix), and its labels."""
    data = dataset(args)
    return [r["text"] for r in shuffled(data.rows())], data.labels


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def naive(path: str, texts, labels, max_tokens: int, queue):
    """What a user without duckllm writes: one chat completion per row (every layer on the GPU when
    there is one), reply matched to a label."""
    from duckllm.evaluation.askers import FreeText, label_reader
    from duckllm.tasks import classify
    system = classify.build(labels).messages[0][1]
    free = FreeText(path, n_ctx=4096, n_threads=_threads(), n_gpu_layers=-1, logprobs=False)
    label_of = label_reader(labels)
    # untimed: the label prompt (its KV cache is kept from row to row), the template
    free.complete(system, "Text: warm up", max_tokens)
    generated = free.completion_tokens
    start = time.perf_counter()
    invalid = 0
    for text in texts:
        reply, _ = free.complete(system, "Text: " + text, max_tokens)
        invalid += label_of(reply) is None
    queue.put((len(texts) / (time.perf_counter() - start), invalid, peak_rss_mb(),
               (free.completion_tokens - generated) / len(texts)))


def _threads() -> int:
    from duckllm.runtime.llama import physical_cores
    return physical_cores()


def prompt_eval_tokens_per_s(path: str) -> float:
    """The model's prompt-eval speed on one 512-token batch in a fresh sequence (best of 2), with
    llama.cpp's fastest kernels for that batch (duckllm's batch-invariant CPU batches run attention over a
    bf16 cache in a slower kernel)."""
    from duckllm.runtime.llama import LlamaRuntime
    runtime = LlamaRuntime(path, n_parallel=1, batch_invariant=False)
    try:
        return max(runtime.prompt_speed(512) for _ in range(2))
    finally:
        runtime.close()


def main():
    ap = parser(__doc__, suite=None, dataset="banking77", model=None, rows=200)
    ap.add_argument("--naive-rows", type=int, default=None, help="rows for the naive loop (default: --rows)")
    ap.add_argument("--naive-max-tokens", type=int, default=16,
                    help="the naive loop's reply limit (a random-weight model never ends its reply: give "
                         "the tokens a real model's answer takes)")
    args = parse(ap)
    import duckllm
    from duckllm.engine.stats import STATS

    texts, labels = load_rows(args)
    n = args.rows
    cold_texts = texts[:n]
    repeated = [texts[n + i % max(1, n // 10)] for i in range(n)]       # fresh, 10% distinct
    path = str(model_path(args.model))

    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=naive, args=(path, texts[:args.naive_rows or n], labels,
                                                               args.naive_max_tokens, queue))
    proc.start()
    while True:         # the naive loop's process may die (a model llama-cpp-python cannot load): say so
        try:
            naive_rps, naive_invalid, naive_rss, naive_generated = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise SystemExit(f"the naive loop's process ended with code {proc.exitcode} (its error is above)")
    proc.join()

    pe_tps = prompt_eval_tokens_per_s(path)      # before the engine loads the model: one copy at a time
    # cold: a result cache of its own
    con = connect(args.model, cache=Path(tempfile.mkdtemp(prefix="duckllm-bench-")) / "cache.sqlite", quiet=True)
    runtime = duckllm.sql.engine_of(con).runtime(args.model)
    query = "SELECT r.label FROM (SELECT i, llm_classify(text, $labels) AS r FROM {} ORDER BY i)"
    con.execute("CREATE TABLE cold AS SELECT unnest($t) AS text, generate_subscripts($t, 1) AS i", {"t": cold_texts})
    con.execute("CREATE TABLE rep AS SELECT unnest($t) AS text, generate_subscripts($t, 1) AS i", {"t": repeated})

    # untimed, as the naive loop's first row: the label prompt, evaluated once however long the column
    con.execute("SELECT llm_classify('warm up', $labels)", {"labels": labels})
    table = [("naive loop", naive_rps, naive_invalid, naive_rss, None)]
    phases = [("duckllm cold", "cold"), ("10%-distinct", "rep"), ("warm rerun", "cold")]
    for name, source in phases:
        before = STATS.snapshot()
        start = time.perf_counter()
        got = con.execute(query.format(source), {"labels": labels}).fetchall()
        rps = len(got) / (time.perf_counter() - start)
        invalid = sum(r[0] not in labels for r in got)
        table.append((name, rps, invalid, peak_rss_mb(), STATS.snapshot()["model_rows"] - before["model_rows"]))
        if name == "duckllm cold":
            cold = dict(zip(("prompt", "gen"), (STATS.snapshot()["prompt_tokens"] - before["prompt_tokens"],
                                                STATS.snapshot()["generated_tokens"] - before["generated_tokens"])))

    batch = min(504, runtime.n_batch)     # what holds duckllm's batches back: attention over the prefix
    fresh_tps = max(runtime.prompt_speed(batch) for _ in range(2))
    prefix_tps = max(runtime.prompt_speed(batch, after_prefix=True) for _ in range(2))
    text_tokens = sum(len(runtime.tokenize(t)) for t in cold_texts)
    limit_rps = pe_tps / (text_tokens / n)
    model_mb = Path(path).stat().st_size / 1e6
    info = runtime.describe()
    print(f"model {Path(path).name} ({model_mb:.0f} MB), dataset {args.dataset}, {n} rows, {len(labels)} labels, "
          f"device {info['device']} ({info['gpu_layers_offloaded']} layers offloaded), threads {info['threads']}, "
          f"{info['parallel_rows']} rows in flight")
    print(f"prompt eval {pe_tps:.1f} tok/s; {text_tokens / n:.1f} text tokens/row -> limit {limit_rps:.2f} rows/s; "
          f"cold run evaluated {cold['prompt'] / n:.1f} prompt + {cold['gen'] / n:.1f} answer tokens/row; "
          f"the naive loop generated {naive_generated:.1f} tokens/row")
    print(f"duckllm's own {batch}-token batch ({info['batch_tokens']}, {info['kv_cache']} cache): "
          f"{fresh_tps:.1f} tok/s fresh, {prefix_tps:.1f} after the {runtime.prefix_tokens}-token shared prompt")
    print()
    print("| phase | rows/s | x naive | x cold | invalid | model rows | peak RSS MB | % of prompt-eval limit |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    cold_rps = table[1][1]
    for name, rps, invalid, rss, model_rows in table:
        pct = f"{100 * rps / limit_rps:.0f}%" if name == "duckllm cold" else ""
        print(f"| {name} | {rps:.2f} | {rps / naive_rps:.1f} | {rps / cold_rps:.1f} | {invalid} | "
              f"{'' if model_rows is None else model_rows} | {rss:.0f} | {pct} |")
    print(f"\npeak RSS budget: model file {model_mb:.0f} MB + 500 MB = {model_mb + 500:.0f} MB")


if __name__ == "__main__":
    main()
