"""Classification quality and speed of duckllm's llm_classify, per model, on public datasets.

For each model and dataset: a fixed-seed sample of rows goes through llm_classify in DuckDB;
we report accuracy, invalid answers, confidence AUROC for both confidence methods, and rows/s.
--baseline adds the same model asked in free text with a plain chat prompt (one chat completion
per row, reply matched to a label), as a tool without constrained decoding would do.
--laduck adds laduck's llm_classify (the DuckDB extension embedding llama.cpp, hamidr/laduck,
src/functions/llm_classify.cpp): the raw text alone, no instructions and no label list, one
forward pass in a fresh context per row, and the softmax over each label's first-token logit.

    python bench/classify_quality.py --models smollm2-135m,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b \
        --datasets sms_spam,ag_news,banking77 --limit 100 --baseline --laduck

Reads the suite at run time (--suite, default ../shared/data); copies none of its rows.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from _common import connect, dataset, model_path, parse, parser

from duckllm.confidence import auroc
from duckllm.evaluation.askers import FreeText
from duckllm.evaluation.datasets import sample_rows


def sample(args, name: str):
    """A fixed-seed sample of --limit rows: their texts, gold labels, the label set and descriptions."""
    data = dataset(args, name)
    rows = sample_rows(data.rows(), args.limit)
    return [r["text"] for r in rows], [r["label"] for r in rows], data.labels, data.descriptions


def run_duckllm(model: str, texts, labels, descriptions):
    """llm_classify through DuckDB; timed on the default confidence, then again for the other."""
    con = connect(model, cache=False)        # measure the model, not the result cache
    con.execute("CREATE TABLE t AS SELECT unnest($texts) AS text, generate_subscripts($texts, 1) AS i",
                {"texts": texts})
    con.execute("SELECT llm_classify('hello', ['a', 'b'])").fetchall()  # load the model untimed
    params = {"labels": labels, "desc": descriptions or None}
    query = """SELECT i, r.label, r.confidence FROM (
                 SELECT i, llm_classify(text, $labels, descriptions := $desc, confidence := '{}') AS r
                 FROM t) ORDER BY i"""
    start = time.perf_counter()
    rows = con.execute(query.format("mean_token"), params).fetchall()
    seconds = time.perf_counter() - start
    # a run of its own: without the rest of each label to score, batches differ and llama.cpp's
    # sums with them, so a near tie can fall the other way; judge it against its own answers
    choice = con.execute(query.format("choice"), params).fetchall()
    return [r[1] for r in rows], [r[2] for r in rows], [(r[1], r[2]) for r in choice], seconds


def run_free_text(model: str, texts, labels, descriptions):
    """The same model asked in free text, one chat completion per row, reply matched to a label."""
    free = FreeText(model_path(model))
    start = time.perf_counter()
    answers = free.classify(texts, labels, descriptions)
    return [a.value for a in answers], [a.confidence for a in answers], time.perf_counter() - start


def run_first_token(model: str, texts, labels):
    """laduck's method, as its C++ does it, on llama-cpp-python's C API (threads and weight
    layout as duckllm's, so the methods are compared, not settings)."""
    import llama_cpp as c
    import numpy as np

    from duckllm.runtime.device import physical_cores
    from duckllm.runtime.llama_resources import start
    start()       # llama.cpp's logs quiet, its backend ready
    mparams = c.llama_model_default_params()
    mparams.use_extra_bufts = False
    llama = c.llama_model_load_from_file(str(model_path(model)).encode(), mparams)
    vocab = c.llama_model_get_vocab(llama)

    def tokenize(text: str, special: bool) -> list[int]:
        data = text.encode()
        buf = (c.llama_token * (len(data) + 32))()
        return list(buf[:max(0, c.llama_tokenize(vocab, data, len(data), buf, len(buf), special, special))])
    first = [tokenize(label, False)[0] for label in labels]
    predictions, confidences = [], []
    start = time.perf_counter()
    for text in texts:
        tokens = tokenize(text, True)
        cparams = c.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch = len(tokens) + 1, len(tokens)
        cparams.n_threads = cparams.n_threads_batch = physical_cores()
        ctx = c.llama_init_from_model(llama, cparams)
        array = (c.llama_token * len(tokens))(*tokens)     # kept alive: the batch only points at it
        if c.llama_decode(ctx, c.llama_batch_get_one(array, len(tokens))) != 0:
            raise SystemExit(f"laduck's method: llama_decode failed on {text!r}")
        logits = np.ctypeslib.as_array(c.llama_get_logits_ith(ctx, len(tokens) - 1),
                                       shape=(c.llama_vocab_n_tokens(vocab),))
        scores = logits[first].astype(np.float64)
        probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        best = int(np.argmax(probs))          # the first of tied labels, as laduck's strict '>'
        predictions.append(labels[best])
        confidences.append(float(probs[best]))
        c.llama_free(ctx)
    seconds = time.perf_counter() - start
    c.llama_model_free(llama)
    return predictions, confidences, seconds


def main():
    ap = parser(__doc__, suite=None, models="smollm2-135m,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b",
                datasets="sms_spam,ag_news,banking77", limit=100)
    ap.add_argument("--baseline", action="store_true", help="also ask in free text (slow)")
    ap.add_argument("--laduck", action="store_true", help="also laduck's method: first-token softmax over the raw text")
    ap.add_argument("--json", type=Path, help="write the rows of the table here too")
    args = parse(ap)

    header = ("model", "dataset", "method", "rows", "accuracy", "invalid", "auroc_mean_token",
              "auroc_choice", "rows_per_s")
    table = []
    for model in args.models.split(","):
        for name in args.datasets.split(","):
            texts, gold, labels, desc = sample(args, name)
            pred, conf_mean, choice, secs = run_duckllm(model, texts, labels, desc)
            right = [p == g for p, g in zip(pred, gold)]
            choice_right = [p == g for (p, _), g in zip(choice, gold)]
            table.append((model, name, "duckllm", len(texts), sum(right) / len(texts),
                          sum(p not in labels for p in pred), auroc(conf_mean, right),
                          auroc([c for _, c in choice], choice_right), len(texts) / secs))
            print(_fmt(table[-1]), file=sys.stderr, flush=True)
            if args.baseline:
                pred, conf, secs = run_free_text(model, texts, labels, desc)
                right = [p == g for p, g in zip(pred, gold)]
                table.append((model, name, "free text", len(texts), sum(right) / len(texts),
                              sum(p is None for p in pred), auroc(conf, right), None, len(texts) / secs))
                print(_fmt(table[-1]), file=sys.stderr, flush=True)
            if args.laduck:
                pred, conf, secs = run_first_token(model, texts, labels)
                right = [p == g for p, g in zip(pred, gold)]
                table.append((model, name, "laduck", len(texts), sum(right) / len(texts), 0,
                              auroc(conf, right), None, len(texts) / secs))
                print(_fmt(table[-1]), file=sys.stderr, flush=True)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in table:
        print(_fmt(row))
    if args.json:
        args.json.write_text(json.dumps([dict(zip(header, r)) for r in table], indent=1))


def _fmt(row) -> str:
    return "| " + " | ".join("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"


if __name__ == "__main__":
    main()
