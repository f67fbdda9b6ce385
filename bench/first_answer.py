"""The first answer of a fresh process: the shared prompt evaluated, or its KV state loaded from disk.

Each run is a new `python -m duckllm.cli sql` process labeling one text over banking77's 77 labels
(a ~490-token shared prompt on the default model), with the result cache off (DUCKLLM_CACHE=0), in
a duckllm home of its own with the model linked in. Rounds alternate the phases:
  SELECT 1            the floor: Python, DuckDB and duckllm's macros, no model
  evaluated           prefix states off (DUCKLLM_PREFIX_CACHE_MB=0): the prompt evaluated, as before
  evaluated + kept    states on, none kept yet: evaluated, then written to disk
  loaded              states on, the state kept: loaded instead of evaluated
and every model run's answer (label and confidence, printed in full) must be the same.

--crossover measures, in one process, one row's call with a shared prompt of about N tokens,
evaluated against loaded: where loading starts to pay (runtime/prefix_store.py, MIN_TOKENS).

    python bench/first_answer.py [--runs 3] [--model qwen2.5-coder-1.5b] [--crossover]
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import dataset, model_path, parse, parser

REPO = Path(__file__).resolve().parents[1]
TEXT = "my card has not arrived yet"


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def run_cli(query: str, model: str, home: Path, **env) -> tuple[float, str]:
    """Wall seconds of one fresh `duckllm sql` process, and what it printed."""
    env = dict(os.environ, DUCKLLM_HOME=str(home), DUCKLLM_CACHE="0", DUCKLLM_PROGRESS="0",
               PYTHONPATH=str(REPO), **env)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "duckllm.cli", "sql", "--model", model, "--mode", "json", query],
                          capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"duckllm sql failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, done.stdout


def first_answer(model: str, model_path: Path, labels: list[str], runs: int) -> None:
    query = (f"SELECT llm_classify({sql_literal(TEXT)}, [{', '.join(map(sql_literal, labels))}]) AS r")
    with tempfile.TemporaryDirectory(prefix="duckllm-first-") as tmp:
        home = Path(tmp)
        (home / "models").mkdir()
        (home / "models" / model_path.name).symlink_to(model_path)
        states = home / "prefix"
        phases = {"SELECT 1": [], "evaluated": [], "evaluated + kept": [], "loaded": []}
        answers: dict[str, set[str]] = {name: set() for name in phases}
        run_cli(query, model, home)      # untimed: pages the model file in, writes its hash stamp
        for round_ in range(runs):
            for name in phases:
                env = {"DUCKLLM_PREFIX_CACHE_MB": "0"} if name == "evaluated" else {}
                if name == "evaluated + kept":
                    shutil.rmtree(states, ignore_errors=True)
                seconds, printed = run_cli("SELECT 1" if name == "SELECT 1" else query, model, home, **env)
                phases[name].append(seconds)
                answers[name].add(printed)
                print(f"round {round_ + 1}/{runs}: {name}: {seconds:.2f} s", file=sys.stderr)
        kept = sorted(states.glob("*.kvstate"))
        state_mb = sum(p.stat().st_size for p in kept) / 1e6
    model_answers = answers["evaluated"] | answers["evaluated + kept"] | answers["loaded"]
    evaluated = statistics.median(phases["evaluated"])
    print(f"fresh-process first answer, {model_path.name}, banking77's {len(labels)} labels, "
          f"DUCKLLM_CACHE=0, {runs} alternating runs each; load average {os.getloadavg()[0]:.1f}")
    print(f"prompt prefix state on disk: {len(kept)} file, {state_mb:.1f} MB\n")
    print("| phase | wall s (each run) | median s | x evaluated |")
    print("|---|---|---:|---:|")
    for name, times in phases.items():
        median = statistics.median(times)
        print(f"| {name} | {', '.join(f'{t:.2f}' for t in times)} | {median:.2f} | {evaluated / median:.2f} |")
    same = len(model_answers) == 1
    print(f"\nanswers identical across all {3 * runs} model runs: {'yes' if same else 'NO'}")
    print(next(iter(model_answers)).strip() if same else "\n".join(sorted(model_answers)))
    if not same:
        sys.exit(1)


def crossover(model_path: Path, sizes: list[int], repeats: int = 3) -> None:
    """One row's call, its shared prompt about n tokens long, on a runtime with prefix states off
    (evaluated) and one with them on and the state kept (loaded); between two calls of one size
    comes a call with another prompt, so each call must set up its prefix again."""
    from duckllm.prompt_format import Prompt
    from duckllm.runtime.llama import LlamaRuntime
    from duckllm.runtime.prefix_store import PrefixStore
    from duckllm.settings import Settings
    from duckllm.store import ModelStore
    with tempfile.TemporaryDirectory(prefix="duckllm-crossover-") as tmp:
        store = PrefixStore(Path(tmp), ModelStore(Settings.from_env().home).identity(model_path), min_tokens=1)
        off, on = LlamaRuntime(model_path), LlamaRuntime(model_path, prefix_store=store)
        fmt = off.format
        word_tokens = len(off.tokenize(" lorem ipsum dolor sit amet")) / 5

        def prompt(n: int, salt: str) -> Prompt:
            filler = " ".join(["lorem ipsum dolor sit amet"] * max(0, round(n / word_tokens / 5)))
            return fmt.split([("system", f"{salt} {filler}. Answer a or b.")])

        def call(runtime, p) -> float:
            started = time.perf_counter()
            runtime.choose(p, ["which one?"], ["a", "b"])
            return time.perf_counter() - started

        print(f"one row's call, {model_path.name}: shared prompt evaluated vs loaded "
              f"(best of {repeats}; load average {os.getloadavg()[0]:.1f})\n")
        print("| prefix tokens | evaluated s | loaded s | saved s | state MB |")
        print("|---:|---:|---:|---:|---:|")
        for n in sizes:
            p, other = prompt(n, f"Task {n}."), prompt(n, f"Other {n}.")
            call(on, p)                                  # evaluates and keeps it
            tokens = len(off.tokenize_prompt(p.shared))
            evaluated, loaded = [], []
            for _ in range(repeats):
                call(off, other), call(on, other)
                evaluated.append(call(off, p))
                loaded.append(call(on, p))
            size = sum(f.stat().st_size for f in Path(tmp).glob("*.kvstate")) / 1e6
            best_e, best_l = min(evaluated), min(loaded)
            print(f"| {tokens} | {best_e:.3f} | {best_l:.3f} | {best_e - best_l:+.3f} | {size:.1f} |")
            for f in Path(tmp).glob("*.kvstate"):
                f.unlink()
        off.close()
        on.close()


def main():
    ap = parser(__doc__, suite=None, model=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--crossover", action="store_true", help="measure loading against evaluating by prefix length")
    ap.add_argument("--sizes", default="8,16,32,64,128,256,512")
    args = parse(ap)
    from duckllm.store import catalog
    model = args.model or catalog.DEFAULT_MODEL
    path = model_path(model).resolve()
    if args.crossover:
        crossover(path, [int(s) for s in args.sizes.split(",")])
        return
    first_answer(model, path, dataset(args, "banking77").labels, args.runs)


if __name__ == "__main__":
    main()
