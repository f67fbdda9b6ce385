"""The engine applies a task to a column of texts: NULLs and empty texts, identical texts, the
result cache, the model to use, progress and statistics. It knows nothing of DuckDB; the SQL
layer calls it. Everything it needs to know comes in its Settings, made at the edge.
"""
from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import Callable, Sequence

from duckllm.confidence import contextual, stored
from duckllm.engine import cancel, models, prompts
from duckllm.engine.cache import ResultCache, key_of
from duckllm.engine.models import FileLoader, Model, load_llama
from duckllm.engine.plan import Plan
from duckllm.engine.progress import Progress
from duckllm.engine.speed import Speeds
from duckllm.engine.stats import STATS
from duckllm.errors import ArgumentError
from duckllm.runtime import Runtime, embed
from duckllm.settings import Settings
from duckllm.store import ModelStore, catalog
from duckllm.tasks import Task

__all__ = ["Engine", "Plan", "load_llama"]


class Engine:
    """Runs tasks on runtimes; each model is loaded lazily, on first use."""

    # Each finished row is written at once, so even a killed process loses none: a write costs
    # ~20 us (SQLite commits every row anyway), a row of model work milliseconds at least.
    FLUSH_EVERY = 1

    def __init__(self, settings: Settings | None = None, load: FileLoader = load_llama,
                 cache: ResultCache | None = None):
        """settings: None takes the environment's (Settings.from_env()). load makes the runtime
        of a model file; cache replaces the result cache at settings.result_cache_path."""
        if settings is not None and not isinstance(settings, Settings):
            raise ArgumentError(f"Engine takes a duckllm.settings.Settings, got {settings!r}; for a default "
                                f"model, pass Settings.from_env(model=...)")
        self.settings = settings or Settings.from_env()
        self.store = ModelStore(self.settings.home)
        self.speeds = Speeds(self.settings.speeds_path)
        self._load = load
        self._cache = cache
        self._runtimes: dict[str, Runtime] = {}
        self._models: dict[str, Model] = {}
        self._loading = threading.Lock()
        self._plans: dict[str, dict[tuple, Plan]] = {}
        self._plans_lock = threading.Lock()
        self._cascade = None
        embed.keep_in(self.store)

    @property
    def default_model(self) -> str:
        return self.settings.model or catalog.DEFAULT_MODEL

    @property
    def cache(self) -> ResultCache:
        if self._cache is None:
            self._cache = ResultCache(self.settings.result_cache_path)
        return self._cache

    def model(self, name: str | None = None) -> Model:
        """The model a name stands for (None: the default), found once."""
        name = name or self.default_model
        with self._loading:
            if name not in self._models:
                self._models[name] = models.find(name, self.settings, self.store, self._load)
            return self._models[name]

    def runtime(self, model: str | None = None) -> Runtime:
        found = self.model(model)
        with self._loading:
            if found.name not in self._runtimes:
                self._runtimes[found.name] = found.load()
            return self._runtimes[found.name]

    # ---- plans ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def planning(self):
        """Open a plan: yields (its id, {(model, task key): Plan}). A call that carries the id,
        run(..., plan=id), is counted into it and answers None; every other call is answered."""
        plan_id, plans = uuid.uuid4().hex, {}
        with self._plans_lock:
            self._plans[plan_id] = plans
        try:
            yield plan_id, plans
        finally:
            with self._plans_lock:
                del self._plans[plan_id]

    # ---- running -------------------------------------------------------------------------

    def run(self, task: Task, texts: Sequence[str | None], use_cache: bool | None = None,
            plan: str | None = None, calibrated: bool = True, query: str | None = None) -> list[dict | None]:
        """One result per text: None for NULL, task.empty for blank, else the model's answer.
        Identical texts are answered once; cached answers are not recomputed. use_cache: None
        follows the settings. plan: the id of an open plan to count the call into instead.
        calibrated: a calibration fitted for this task and model (llm_calibrate) maps the
        confidences. With task.agreement, a proxy answers the rows it may (duckllm.proxy); query
        names the SQL query the call belongs to, so all its calls start from the same stored examples."""
        use_cache = self.settings.cache if use_cache is None else use_cache
        if plan is not None:
            return self._plan(plan, task, texts, use_cache)
        with cancel.working():
            return self._run(task, texts, use_cache, calibrated, query)

    @property
    def cascade(self):
        """The proxy's side of the engine (duckllm.proxy.cascade), made on first use: its
        scikit-learn import costs a start without agreement nothing."""
        if self._cascade is None:
            from duckllm.proxy.cascade import Cascade
            from duckllm.proxy.examples import ExampleStore
            self._cascade = Cascade(ExampleStore(self.cache))
        return self._cascade

    def _plan(self, plan_id: str, task: Task, texts: Sequence[str | None], use_cache: bool) -> list[None]:
        with self._plans_lock:
            plans = self._plans.get(plan_id)
        if plans is None:
            raise ArgumentError(f"no plan {plan_id!r} is open: duckllm_plan is set only while duckllm explain "
                                f"runs its probes; RESET VARIABLE duckllm_plan")
        model = self.model(task.model)
        given = [t for t in texts if t is not None]
        keys = {t: key_of(model.identity, task.key, t) for t in given if t.strip()}
        with self._plans_lock:
            plan = plans.setdefault((model.identity, task.key), Plan(task.name, model.name))
            new = {t: k for t, k in keys.items() if k not in plan.distinct}
            plan.distinct.update(new.values())
        cached = set(self.cache.get_many(list(new.values()))) if use_cache and new else set()
        runtime = self.runtime(task.model)
        rows = prompts.assemble(task, runtime.format, [t for t, k in new.items() if k not in cached])
        shared, tokens = prompts.token_counts(runtime, rows)
        first = not plan.tokens_per_s
        rate = self.speeds.estimate(model.identity, task.name, runtime) if first else None
        share = self.cascade.last_share(model.identity, task.key) if task.agreement and use_cache else None
        with self._plans_lock:
            plan.rows += len(given)
            plan.blank += len(given) - len(keys)
            plan.cached |= cached
            plan.prompt_tokens += tokens
            plan.prefix_tokens = 0 if runtime.prefix_ready(rows.prompt) else shared
            if task.agreement is not None:
                plan.agreement, plan.proxy_share = True, share
            if rate:
                plan.tokens_per_s, plan.speed_source = rate
        return [None] * len(texts)

    def _run(self, task: Task, texts: Sequence[str | None], use_cache: bool,
             calibrated: bool = True, query: str | None = None) -> list[dict | None]:
        started = time.perf_counter()
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
            # a proxy's confidence is its own calibrated chance of agreeing with the model
            result = dict(result) if result.get("answered_by") == "proxy" else calibrate(result)
            for i in positions[text]:
                results[i] = task.finish(result)

        todo = list(positions)
        if todo:
            model = self.model(task.model)
            if calibrated:
                calibrate = stored.applier(self.cache.path, model.identity, task.key)
            keys = {text: key_of(model.identity, task.key, text) for text in todo}
            cached = self.cache.get_many(list(keys.values())) if use_cache else {}
            hits = {t: cached[keys[t]] for t in todo if keys[t] in cached}
            STATS.add(cache_hits=len(hits))
            todo = [t for t in todo if t not in hits]
            if task.agreement is not None:
                self._agree(task, todo, keys, hits, deliver, use_cache, model.identity, query)
            else:
                for text, result in hits.items():
                    deliver(text, result)
                if todo:
                    self._compute(task, todo, keys, deliver, use_cache, model.identity)
        STATS.add(seconds=time.perf_counter() - started)
        return results

    def _agree(self, task: Task, todo: list[str], keys: dict[str, str], hits: dict[str, dict], deliver: Callable,
               use_cache: bool, model_id: str, query: str | None) -> None:
        """A call with agreement: the proxy answers what it may, the model the rest."""
        progress = Progress(task.name, total=len(todo), enabled=self.settings.progress)

        def by_proxy(n: int) -> None:
            STATS.add(proxy_rows=n)
            progress.advance(n, proxy=True)
        try:
            self.cascade.run(task, todo, keys, hits, deliver,
                             lambda texts, done: self._compute(task, texts, keys, done, use_cache, model_id, progress),
                             model_id, query=query, keep=use_cache, counted=by_proxy)
        finally:
            progress.close()

    def _compute(self, task: Task, texts: list[str], keys: dict[str, str], deliver: Callable, use_cache: bool,
                 model_id: str, progress: Progress | None = None) -> None:
        """Answer texts on the model; each row is delivered, counted and cached as it finishes,
        so an interrupted call keeps what it finished. progress: a call's own, shared by its
        model runs (with agreement), else one for these texts."""
        runtime = self.runtime(task.model)
        if task.contextual is not None:    # calibrated without labels: its prior, once per task and model
            task = contextual.prepared(task, runtime, self.cache.path, model_id)
        STATS.set(device=runtime.describe().get("device", "?"))
        own_progress = progress is None
        progress = progress or Progress(task.name, total=len(texts), enabled=self.settings.progress)
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
        rows = prompts.assemble(task, runtime.format, texts)
        started = time.perf_counter()
        try:
            runtime.run(rows.prompt, rows.texts, lambda i, n: task.program(texts[i], n), task.answer_tokens,
                        on_done=on_done, row_prefixes=rows.prefixes)
            self.speeds.record(model_id, task.name, runtime.usage.prompt_tokens - usage[0],
                               time.perf_counter() - started)
        finally:
            flush()
            if own_progress:
                progress.close()
            STATS.add(prompt_tokens=runtime.usage.prompt_tokens - usage[0],
                      generated_tokens=runtime.usage.generated_tokens - usage[1])
