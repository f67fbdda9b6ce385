"""The engine applies a task to a column of texts: NULLs and empty texts, identical texts, the
model to use, and the runtime calls. It knows nothing of DuckDB; the SQL layer calls it.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Sequence

from . import catalog, store
from .prompt_format import FORMATS, Format
from .runtime import Runtime
from .tasks import Choose, Task


_loaded: dict[tuple, Runtime] = {}
_loaded_lock = threading.Lock()


def load_llama(path, fmt: Format | None) -> Runtime:
    """The process's one runtime for a model file: loaded on first use, then shared."""
    from .runtime.llama import LlamaRuntime
    key = (str(path), fmt)
    with _loaded_lock:
        if key not in _loaded:
            _loaded[key] = LlamaRuntime(path, fmt,
                                        n_ctx=int(os.environ.get("DUCKLLM_CONTEXT", 4096)),
                                        n_parallel=int(os.environ.get("DUCKLLM_PARALLEL", 16)))
        return _loaded[key]


class Engine:
    """Runs tasks on runtimes; each model is loaded lazily, on first use."""

    def __init__(self, model: str | None = None,
                 load: Callable[[object, Format | None], Runtime] = load_llama):
        self.default_model = model
        self._load = load
        self._runtimes: dict[str, Runtime] = {}
        self._loading = threading.Lock()

    def runtime(self, model: str | None = None) -> Runtime:
        name = model or self.default_model or catalog.DEFAULT_MODEL
        with self._loading:
            if name not in self._runtimes:
                path = store.resolve(name)
                self._runtimes[name] = self._load(path, self._format_of(name, path))
            return self._runtimes[name]

    @staticmethod
    def _format_of(name: str, path) -> Format | None:
        """The catalog's prompt format; None lets the runtime read it from the GGUF file."""
        spec = None if store.is_path(name) else catalog.lookup(name)
        return FORMATS[spec.prompt_format] if spec else None

    def run(self, task: Task, texts: Sequence[str | None]) -> list[dict | None]:
        """One result per text: None for NULL, task.empty for blank, else the model's answer.
        Identical texts are answered once."""
        results: list[dict | None] = [None] * len(texts)
        positions: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if text is None:
                continue
            if not text.strip():
                results[i] = dict(task.empty)
                continue
            positions.setdefault(text, []).append(i)
        if not positions:
            return results
        distinct = list(positions)
        answers = self._ask(task, distinct)
        for text, answer in zip(distinct, answers):
            result = task.read(answer, text)
            for i in positions[text]:
                results[i] = dict(result)
        return results

    def _ask(self, task: Task, texts: list[str]):
        runtime = self.runtime(task.model)
        prompt = runtime.format.split(list(task.messages), task.row_before, task.row_after)
        request = task.request
        if isinstance(request, Choose):
            return runtime.choose(prompt, texts, request.options)
        return runtime.generate(prompt, texts, request.max_tokens, request.per_input_token)

