"""Host time per row: duckllm's own work between llama_decode calls, before and after a change, in one run.

On a GPU the model's arithmetic is fast and duckllm's Python between decodes (building batches,
normalising logits over the vocabulary, walking the label trie) becomes a large share of the time.
This measures it where the model costs little: a tiny random model with Llama-3's 128,256-token
vocabulary, llm_classify's program over a dataset's labels (banking77: 77), the same rows through the
runtime of an earlier commit (--before, exported from git) and through this tree's, alternating, each
in a process of its own. A timer around llama_decode takes the model's time out:

  host ms/row      wall time less the time inside llama_decode: what a GPU waits for
  host CPU ms/row  the calling thread's CPU time less its time inside llama_decode, plus the CPU
                   time of the threads that normalise log-probabilities beside it: the work itself

On a GPU this tree's runtime spreads the normalisers over the host's cores, idle between decodes
(on the CPU it keeps them on the calling thread), so it is measured that way too (--threads). On a
busy machine wall time mostly measures the machine's other work: read the CPU column, and the best
of --repeats runs. A runtime's answers must be identical to the last bit in every run, whatever its
threads; before and after, the labels identical and the log-probabilities within 1e-5 (the
normaliser's formula changed: they move by about 1e-7).

The tiny model needs Llama-3's tokenizer from a donor GGUF: llama.cpp's vocabulary file, in
llama-cpp-python's source package:

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/sdist
    tar -xzf /tmp/sdist/llama_cpp_python-0.3.36.tar.gz -C /tmp/sdist \\
        llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf
    python bench/host_time.py --donor \
        /tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf
    python bench/host_time.py --model tiny.gguf --rows 256 [--before 3a9d9cb]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from _common import parse, parser

REPO = Path(__file__).resolve().parents[1]
BEFORE = "3a9d9cb"        # main before the log-probabilities of a decode were normalised together


def tiny_model(donor: Path, folder: Path) -> Path:
    """bench/random_gguf.py's tiny shape with the donor's tokenizer and a Llama-3 chat template."""
    script = Path(__file__).with_name("random_gguf.py")
    subprocess.run([sys.executable, str(script), "--donor", str(donor), "--tokenizer-only",
                    str(folder / "tokenizer.gguf"), "--chat-template", "llama-3"], check=True)
    subprocess.run([sys.executable, str(script), "--donor", str(folder / "tokenizer.gguf"), "--shape", "tiny",
                    "--out", str(folder / "tiny.gguf")], check=True)
    return folder / "tiny.gguf"


def export(rev: str, folder: Path) -> Path:
    """The duckllm package as it was at rev, under folder."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "duckllm"],
                             capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"git could not export duckllm at {rev}: {archive.stderr.decode().strip()} "
                         f"(run from a git checkout, or give --before a commit it has)")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def measure(args) -> dict:
    """One runtime's rows, in this process: times in seconds and a digest of the answers."""
    import llama_cpp
    decode = {"wall": 0.0, "cpu": 0.0}
    real = llama_cpp.llama_decode

    def timed(*a):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return real(*a)
        finally:
            decode["wall"] += time.perf_counter() - wall
            decode["cpu"] += time.thread_time() - cpu
    llama_cpp.llama_decode = timed
    helpers = [0.0]          # CPU time of the normalisers' helper threads (this tree's runtime)
    try:
        from duckllm.runtime.logprobs import Normalisers
        rows = Normalisers._rows

        def timed_rows(self, logits):
            cpu = time.thread_time()
            try:
                return rows(self, logits)
            finally:
                if threading.current_thread() is not threading.main_thread():
                    helpers[0] += time.thread_time() - cpu
        Normalisers._rows = timed_rows
    except ImportError:      # a runtime from before them
        pass
    from throughput import load_rows

    import duckllm
    from duckllm.runtime.llama import LlamaRuntime
    from duckllm.tasks import classify

    if args.measure.resolve() not in Path(duckllm.__file__).resolve().parents:
        raise SystemExit(f"measuring {args.measure} but imported {duckllm.__file__}")
    texts, labels = load_rows(args)
    texts = texts[:args.rows]
    task = classify.build(labels)
    runtime = LlamaRuntime(args.model, n_parallel=args.parallel)
    if args.threads:
        runtime.scheduler.normalisers.threads = args.threads
    prompt = runtime.format.split(list(task.messages))

    def run(rows):
        return runtime.run(prompt, [task.render(t) for t in rows], lambda i, n: task.program(rows[i], n),
                           task.answer_tokens)
    run(["warm up"])         # the shared prompt, the trie: once per runtime, not per row
    decode.update(wall=0.0, cpu=0.0)
    helpers[0] = 0.0
    wall, cpu = time.perf_counter(), time.thread_time()
    answers = run(texts)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    return {"host": wall - decode["wall"], "host_cpu": cpu - decode["cpu"] + helpers[0], "decode": decode["wall"],
            "threads": runtime.scheduler.normalisers.threads if hasattr(runtime.scheduler, "normalisers") else 1,
            "digest": hashlib.sha256(repr([a.value for a in answers]).encode()).hexdigest(),
            "labels": [label for label, _ in (a.value for a in answers)],
            "logprobs": [x for _, c in (a.value for a in answers) for x in c.token_logprobs + [c.choice_logprob]]}


def main():
    ap = parser(__doc__, suite=None, dataset="banking77", rows=256)
    ap.add_argument("--model", type=Path, help="the tiny random model (made from --donor when not given)")
    ap.add_argument("--donor", type=Path, help="a GGUF with Llama-3's tokenizer (see above)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the best counts")
    ap.add_argument("--parallel", type=int, default=64)
    ap.add_argument("--before", default=BEFORE, help="the commit whose runtime is 'before'")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)     # a child: the duckllm under this folder
    ap.add_argument("--threads", type=int, help="this tree measured again with the normalisers on this many threads "
                                                 "(default: the physical cores, as on a GPU)")
    args = parse(ap)
    if args.measure:
        print(json.dumps(measure(args)))
        return
    if not args.model and not args.donor:
        ap.error("give --model (a tiny random GGUF) or --donor (to make one); see the help for the donor")
    folder = Path(tempfile.mkdtemp(prefix="duckllm-host-time-"))
    model = args.model or tiny_model(args.donor, folder)
    from duckllm.runtime.device import physical_cores
    threads = args.threads or physical_cores()
    trees = {f"before ({args.before})": (export(args.before, folder / "before"), None), "after": (REPO, None)}
    if threads > 1:
        trees[f"after, normalisers on {threads} threads"] = (REPO, threads)
    print(f"model {model.name}, {args.dataset}, {args.rows} rows, {args.parallel} in flight, "
          f"best of {args.repeats} alternating runs\n")
    runs = {name: [] for name in trees}
    for _ in range(args.repeats):
        for name, (tree, n_threads) in trees.items():
            command = [sys.executable, __file__, "--measure", str(tree), "--model", str(model), "--rows",
                       str(args.rows), "--parallel", str(args.parallel), "--suite", str(args.suite),
                       "--dataset", args.dataset] + (["--threads", str(n_threads)] if n_threads else [])
            out = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                                 text=True, check=False)
            if out.returncode:
                raise SystemExit(f"{name}: {out.stderr.strip()}")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def per_row(name, key):
        return min(r[key] for r in runs[name]) / args.rows * 1e3
    first = next(iter(runs))
    print("| runtime | normaliser threads | host ms/row | ratio | host CPU ms/row | ratio | llama_decode ms/row |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in runs:
        host, cpu = per_row(name, "host"), per_row(name, "host_cpu")
        print(f"| {name} | {runs[name][0]['threads']} | {host:.3f} | {per_row(first, 'host') / host:.2f}x | {cpu:.3f} "
              f"| {per_row(first, 'host_cpu') / cpu:.2f}x | {per_row(name, 'decode'):.3f} |")
    print("\nhost ms/row of each run: " + "; ".join(
        f"{name}: {[round(r['host'] / args.rows * 1e3, 3) for r in runs[name]]}" for name in runs))
    before, after = runs[first], [r for name in runs if name != first for r in runs[name]]
    exact = len({r["digest"] for r in before}) == 1 and len({r["digest"] for r in after}) == 1
    labels = all(r["labels"] == before[0]["labels"] for r in after)
    moved = max(abs(a - b) for a, b in zip(before[0]["logprobs"], after[0]["logprobs"]))
    print(f"each runtime's answers identical in every run, whatever its threads (to the last bit): {exact}; "
          f"labels identical before and after: {labels}; largest log-probability difference: {moved:.1e}")
    if not (exact and labels and moved < 1e-5):
        raise SystemExit("the answers differ")


if __name__ == "__main__":
    main()
