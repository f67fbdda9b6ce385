"""How the engine finds a model by name: registered runtimes first, then the catalog and .gguf
paths through the model store of the settings' home.

A registered model is a name and a loader (settings -> runtime), as simonw/llm's plugins register
theirs: tests register their fake runtime this way, and code that brings its own runtime can too.
Its cached answers are keyed by its name, where a file's are keyed by its sha256.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from duckllm.errors import ArgumentError
from duckllm.prompt_format import FORMATS, Format
from duckllm.runtime import Runtime, prefix_store
from duckllm.runtime.prefix_store import PrefixStore
from duckllm.settings import Settings
from duckllm.store import ModelStore, catalog, is_path

Loader = Callable[[Settings], Runtime]
FileLoader = Callable[[Path, "Format | None", Settings], Runtime]

_registered: dict[str, Loader] = {}
_registered_lock = threading.Lock()


def register(name: str, load: Loader) -> None:
    """Make `name` a model whose runtime load(settings) makes (on first use, per engine)."""
    if not isinstance(name, str) or not name.strip():
        raise ArgumentError(f"a registered model needs a name, got {name!r}")
    with _registered_lock:
        _registered[name] = load


def unregister(name: str) -> None:
    with _registered_lock:
        _registered.pop(name, None)


@dataclass(frozen=True)
class Model:
    name: str                       # as the caller wrote it
    identity: str                   # keys cached answers and speeds: the file's sha256, or the registered name
    load: Callable[[], Runtime]     # its runtime, made on first use


def find(name: str, settings: Settings, store: ModelStore, load_file: FileLoader) -> Model:
    """The model a name stands for; a catalog model is fetched into the home when missing."""
    with _registered_lock:
        registered = _registered.get(name)
    if registered is not None:
        return Model(name, f"registered:{name}", lambda: registered(settings))
    path = store.resolve(name)
    fmt = None if is_path(name) else FORMATS[catalog.get(name).prompt_format]   # None: read from the file
    return Model(name, store.identity(path), lambda: load_file(path, fmt, settings))


# ---- GGUF files on llama.cpp ----------------------------------------------------------------

_loaded: dict[tuple, Runtime] = {}
_loaded_lock = threading.Lock()


def load_llama(path, fmt: Format | None, settings: Settings) -> Runtime:
    """The process's one runtime for a model file and the settings that size it: loaded on first
    use, then shared by every engine."""
    from duckllm.runtime.llama import LlamaRuntime
    # None: the runtime's defaults for its device
    sizes = dict(n_ctx=settings.context, n_batch=settings.batch, n_parallel=settings.parallel,
                 n_threads=settings.threads, batch_invariant=settings.batch_invariant, verbose=settings.verbose)
    states = _prefix_store(path, settings)
    key = (str(path), fmt, *sorted(sizes.items()))   # the first home's prefix folder serves the process
    with _loaded_lock:
        if key not in _loaded:
            _loaded[key] = LlamaRuntime(path, fmt, **sizes, prefix_store=states)
        return _loaded[key]


def _prefix_store(path: Path, settings: Settings) -> PrefixStore | None:
    """Where the model's shared prompts' KV states are kept (settings.prefix_cache_mb 0: nowhere)."""
    if not settings.prefix_cache_mb or not Path(path).is_file():   # no file: llama.cpp says what is wrong
        return None
    return PrefixStore(prefix_store.folder_in(settings.home), ModelStore(settings.home).identity(path),
                       max_bytes=settings.prefix_cache_mb << 20)
