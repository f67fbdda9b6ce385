"""What the bench scripts share: their command-line options, declared once, and the one place
that opens duckllm with a bench's own settings (a result cache of its own, or none; no progress
line), so no script reassigns a module's globals or writes the environment.

The suite's rows come from the library (duckllm.evaluation.datasets: the manifest, the loaders,
the fixed seed), the free-text baseline from duckllm.evaluation.askers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from duckllm.evaluation.datasets import Dataset, default_suite

# name: (flags, argparse keywords); a script picks the options it takes and their defaults
OPTIONS = {
    "suite": (("--suite",), dict(type=Path, help="folder with datasets.json (default: ../shared/data)")),
    "model": (("--model",), dict(help="catalog name or .gguf (default: the default model)")),
    "models": (("--models",), dict(help="comma-separated catalog names or .gguf paths")),
    "dataset": (("--dataset",), dict(help="a dataset of the suite")),
    "datasets": (("--datasets",), dict(help="comma-separated datasets of the suite")),
    "limit": (("--limit",), dict(type=int, help="rows sampled per dataset (fixed seed)")),
    "rows": (("--rows",), dict(type=int, help="rows to label")),
}


def parser(doc: str, **defaults) -> argparse.ArgumentParser:
    """An argument parser with the shared options named, each with the script's default:
    parser(__doc__, suite=None, model=None, dataset="banking77", rows=200)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in defaults.items():
        flags, keywords = OPTIONS[name]
        ap.add_argument(*flags, default=default, **keywords)
    return ap


def parse(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments; --suite defaults to the public suite, and a folder without datasets.json
    stops the script with what to pass."""
    args = ap.parse_args()
    if "suite" in vars(args):
        args.suite = args.suite or default_suite()
        if args.suite is None or not (args.suite / "datasets.json").exists():
            sys.exit(f"no suite at {args.suite or '../shared/data'}; pass --suite DIR holding datasets.json")
    return args


def dataset(args: argparse.Namespace, name: str | None = None) -> Dataset:
    return Dataset.open(args.suite, name or args.dataset)


# ---- duckllm with a bench's settings ------------------------------------------------------------

def _settings(quiet: bool, **chosen):
    """The environment's settings with the bench's choices; quiet: no progress line unless
    DUCKLLM_PROGRESS asks for one (it would be drawn inside the timed part)."""
    from duckllm.settings import Settings
    settings = Settings.from_env(**chosen)
    return settings.replace(progress=False) if quiet and settings.progress is None else settings


def connect(model: str | None = None, *, cache: bool | Path = False, quiet: bool = False):
    """A connection whose result cache is cache (False: none, the model is measured; a path: a
    cache file of the bench's own)."""
    import duckllm
    return duckllm.connect(model=model, cache=cache, settings=_settings(quiet))


def engine(path: Path, *, parallel: int, batch_invariant: bool):
    """An engine on the model file path with a runtime of its own (engine.runtime().close() frees
    it), parallel rows in flight; no progress line unless DUCKLLM_PROGRESS asks for one."""
    from duckllm.engine import Engine
    from duckllm.runtime.llama import LlamaRuntime
    settings = _settings(True, model=str(path), parallel=parallel, batch_invariant=batch_invariant)
    return Engine(settings, load=lambda file, fmt, s: LlamaRuntime(file, fmt, n_parallel=s.parallel,
                                                                   batch_invariant=s.batch_invariant))


def model_path(name: str | None) -> Path:
    """The model file of a catalog name or a .gguf path (fetched once if missing)."""
    from duckllm.store import ModelStore
    return ModelStore(_settings(False).home).resolve(name)
