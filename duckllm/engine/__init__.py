"""The engine applies a task to a column of texts: NULLs and empty texts, identical texts, the
result cache, the model to use, progress and statistics. It knows nothing of DuckDB; the SQL
layer calls it.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from duckllm import store
from duckllm.confidence import contextual, stored
from duckllm.engine import cancel, speed
from duckllm.engine.cache import ResultCache, key_of
from duckllm.engine.progress import Progress
from duckllm.engine.stats import STATS
from duckllm.errors import ModelError
from duckllm.prompt_format import FORMATS, Format, Prompt
from duckllm.runtime import Runtime
from duckllm.store import catalog
from duckllm.tasks import Task

_loaded: dict[tuple, Runtime] = {}
_loaded_lock = threading.Lock()


def load_llama(path, fmt: Format | None) -> Runtime:
    """The process's one runtime for a model file: loaded on first use, then shared."""
    from duckllm.runtime.llama import DEFAULTS, LlamaRuntime
    key = (str(path), fmt)
    like = DEFAULTS["cpu"]        # what an error shows as a valid value
    with _loaded_lock:
        if key not in _loaded:
            _loaded[key] = LlamaRuntime(path, fmt,
                                        # unset: the runtime's defaults for its device
                                        n_ctx=_env_int("DUCKLLM_CONTEXT", None, like=like["n_ctx"]),
                                        n_parallel=_env_int("DUCKLLM_PARALLEL", None, like=like["n_parallel"]),
                                        n_batch=_env_int("DUCKLLM_BATCH", None, like=like["n_batch"]),
                                        # several workers on one machine split its cores (duckllm.distributed)
                                        n_threads=_env_int("DUCKLLM_THREADS", 0, lowest=0) or None,
                                        batch_invariant=bool(_env_int("DUCKLLM_BATCH_INVARIANT", 1, lowest=0)))
        return _loaded[key]


def _env_int(name: str, default: int | None, lowest: int = 1, like: int | None = None) -> int | None:
    """A whole-number setting from the environment; a typo is an error that names it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lowest - 1
    if value < lowest:
        raise ModelError(f"{name}={raw!r} is not a whole number from {lowest}; set it like "
                         f"{name}={default if like is None else like}, or unset it for the default")
    return value


def cache_enabled() -> bool:
    return os.environ.get("DUCKLLM_CACHE", "on").lower() not in ("0", "off", "false", "no")


@dataclass
class Plan:
    """What one task would ask of the model, counted instead of answered (Engine.planning)."""
    function: str
    model: str
    rows: int = 0                  # non-NULL rows
    blank: int = 0                 # empty or whitespace texts: answered without the model
    distinct: set[str] = field(default_factory=set)   # cache keys of the distinct other texts
    cached: set[str] = field(default_factory=set)     # those already in the result cache
    prompt_tokens: int = 0         # row-prompt tokens (text + chat tail) of the texts to compute
    prefix_tokens: int = 0         # the shared prompt, evaluated once when anything is computed
    tokens_per_s: float = 0.0      # row-prompt tokens/s expected on this machine ...
    speed_source: str = ""         # ... and where that figure comes from

    @property
    def to_compute(self) -> int:
        return len(self.distinct) - len(self.cached)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.prefix_tokens if self.to_compute else 0

    @property
    def seconds(self) -> float:
        return self.tokens / self.tokens_per_s if self.tokens_per_s else 0.0


class Engine:
    """Runs tasks on runtimes; each model is loaded lazily, on first use."""

    # Each finished row is written at once, so even a killed process loses none: a write costs
    # ~20 us (SQLite commits every row anyway), a row of model work milliseconds at least.
    FLUSH_EVERY = 1

    def __init__(self, model: str | None = None,
                 load: Callable[[object, Format | None], Runtime] = load_llama,
                 cache: ResultCache | None = None):
        self.default_model = model
        self._load = load
        self._cache = cache
        self._runtimes: dict[str, Runtime] = {}
        self._models: dict[str, tuple[object, str]] = {}   # name -> (path, identity for cache keys)
        self._loading = threading.Lock()
        self._plans: dict[tuple, Plan] | None = None
        self._plans_lock = threading.Lock()

    @contextlib.contextmanager
    def planning(self):
        """Inside, run() answers nothing (every result is None): it counts what it would ask
        of the model into the yielded {(model, task key): Plan}, for `duckllm explain`. Meant for
        one probe query at a time; calls from other queries meanwhile are counted, not answered."""
        self._plans = plans = {}
        try:
            yield plans
        finally:
            self._plans = None

    @property
    def cache(self) -> ResultCache:
        if self._cache is None:
            self._cache = ResultCache()
        return self._cache

    def _model(self, name: str | None) -> tuple[str, object, str]:
        name = name or self.default_model or catalog.DEFAULT_MODEL
        with self._loading:
            if name not in self._models:
                path = store.resolve(name)
                self._models[name] = (path, store.identity(path))
            return (name, *self._models[name])

    def runtime(self, model: str | None = None) -> Runtime:
        name, path, _ = self._model(model)
        with self._loading:
            if name not in self._runtimes:
                self._runtimes[name] = self._load(path, self._format_of(name))
            return self._runtimes[name]

    @staticmethod
    def _format_of(name: str) -> Format | None:
        """The catalog's prompt format; None lets the runtime read it from the GGUF file."""
        spec = None if store.is_path(name) else catalog.lookup(name)
        return FORMATS[spec.prompt_format] if spec else None

    def run(self, task: Task, texts: Sequence[str | None], use_cache: bool | None = None,
            calibrated: bool = True) -> list[dict | None]:
        """One result per text: None for NULL, task.empty for blank, else the model's answer.
        Identical texts are answered once; cached answers are not recomputed. calibrated: a
        calibration fitted for this task and model (llm_calibrate) maps the confidences."""
        if self._plans is not None:
            return self._plan(task, texts, cache_enabled() if use_cache is None else use_cache)
        with cancel.working():
            return self._run(task, texts, use_cache, calibrated)

    def model_id(self, model: str | None = None) -> str:
        """The identity of a model's file (its sha256) that keys cached answers and calibrations."""
        return self._model(model)[2]

    def _plan(self, task: Task, texts: Sequence[str | None], use_cache: bool) -> list[None]:
        name, _, model_id = self._model(task.model)
        given = [t for t in texts if t is not None]
        keys = {t: key_of(model_id, task.key, t) for t in given if t.strip()}
        with self._plans_lock:
            plan = self._plans.setdefault((model_id, task.key), Plan(task.name, name))
            new = {t: k for t, k in keys.items() if k not in plan.distinct}
            plan.distinct.update(new.values())
        cached = set(self.cache.get_many(list(new.values()))) if use_cache and new else set()
        runtime = self.runtime(task.model)
        prompt = runtime.format.split(list(task.messages))
        tail = len(runtime.tokenize(prompt.tail, special=True))
        tokens = sum(len(runtime.tokenize(t)) + tail for t, k in new.items() if k not in cached)
        first = not plan.tokens_per_s
        rate = speed.estimate(model_id, task.name, runtime) if first else None
        with self._plans_lock:
            plan.rows += len(given)
            plan.blank += len(given) - len(keys)
            plan.cached |= cached
            plan.prompt_tokens += tokens
            if rate:
                plan.tokens_per_s, plan.speed_source = rate
                plan.prefix_tokens = len(runtime.tokenize_prompt(prompt.shared))
        return [None] * len(texts)

    def _run(self, task: Task, texts: Sequence[str | None], use_cache: bool | None,
             calibrated: bool = True) -> list[dict | None]:
        started = time.perf_counter()
        use_cache = cache_enabled() if use_cache is None else use_cache
        results: list[dict | None] = [None] * len(texts)
        positions: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if text is None:
                continue
            if not text.strip():
                results[i] = dict(task.empty)
                continue
            positions.setdefault(text, []).append(i)
        n_rows = sum(len(p) for p in positions.values())
        STATS.add(calls=1, rows=len(texts), dedup_hits=n_rows - len(positions))

        calibrate = dict        # a copy; a stored calibration's map where one was fitted

        def deliver(text: str, result: dict) -> None:
            for i in positions[text]:
                results[i] = task.finish(calibrate(result))

        todo = list(positions)
        if todo:
            _, _, model_id = self._model(task.model)
            if calibrated:
                calibrate = stored.applier(self.cache.path, model_id, task.key)
            keys = {text: key_of(model_id, task.key, text) for text in todo}
            if use_cache:
                cached = self.cache.get_many(list(keys.values()))
                for text in todo:
                    if keys[text] in cached:
                        deliver(text, cached[keys[text]])
                STATS.add(cache_hits=sum(keys[t] in cached for t in todo))
                todo = [t for t in todo if keys[t] not in cached]
            if todo:
                self._compute(task, todo, keys, deliver, use_cache, model_id)
        STATS.add(seconds=time.perf_counter() - started)
        return results

    def _compute(self, task: Task, texts: list[str], keys: dict[str, str], deliver, use_cache: bool,
                 model_id: str) -> None:
        """Answer texts on the model; each row is delivered, counted and cached as it finishes,
        so an interrupted call keeps what it finished."""
        runtime = self.runtime(task.model)
        if task.contextual is not None:    # calibrated without labels: its prior, once per task and model
            task = contextual.prepared(task, runtime, self.cache.path, model_id)
        STATS.set(device=runtime.describe().get("device", "?"))
        prompt = runtime.format.split(list(task.messages))
        progress = Progress(task.name, total=len(texts))
        finished: list[tuple[str, dict]] = []
        usage = (runtime.usage.prompt_tokens, runtime.usage.generated_tokens)

        def flush():
            if use_cache:
                self.cache.put_many(task.name, finished)
            STATS.add(model_rows=len(finished))
            progress.advance(len(finished))
            finished.clear()

        def on_done(i: int, answer) -> None:
            result = task.read(answer, texts[i])
            deliver(texts[i], result)
            finished.append((keys[texts[i]], result))
            if len(finished) >= self.FLUSH_EVERY:
                flush()
        task.prepare(texts)
        prefixes = None
        if task.row_turns:    # each row opens its own user turn after turns of its own
            fmt = runtime.format
            prompt = Prompt(fmt.render(list(task.messages)), prompt.tail)
            prefixes = [fmt.open_turn(task.row_turns(t)) for t in texts]
        started = time.perf_counter()
        try:
            runtime.run(prompt, [task.render(t) for t in texts], lambda i, n: task.program(texts[i], n),
                        task.answer_tokens, on_done=on_done, row_prefixes=prefixes)
            speed.record(model_id, task.name, runtime.usage.prompt_tokens - usage[0], time.perf_counter() - started)
        finally:
            flush()
            progress.close()
            STATS.add(prompt_tokens=runtime.usage.prompt_tokens - usage[0],
                      generated_tokens=runtime.usage.generated_tokens - usage[1])
