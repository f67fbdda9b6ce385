"""Settings: made once at the edge (the environment, connect() and register()'s arguments),
checked there, and passed down. The environment's mistypes are in test_reliability.py."""
import re

import pytest

import duckllm
from duckllm.engine import Engine
from duckllm.errors import ArgumentError
from duckllm.settings import Settings

BAD = [  # (arguments of duckllm.connect, what the error says)
    (dict(cache=42), "cache must be True, False or the path of a result cache file, got 42"),
    (dict(cache=""), "cache must be True, False or the path of a result cache file, got ''"),
    (dict(model=42), "model must be a catalog name such as 'smollm2-135m' or the path of a .gguf file, got 42"),
    (dict(settings="fast"), "settings must be a duckllm.settings.Settings, got 'fast'; make one with Settings.from_env"),
]


@pytest.mark.parametrize("arguments, message", BAD)
def test_a_bad_argument_to_connect_is_an_error_naming_it(arguments, message):
    with pytest.raises(ArgumentError, match=re.escape(message)):
        duckllm.connect(**arguments)


REPLACED = [  # (a setting given as an argument, what the error says)
    (dict(context=0), "setting context must be a whole number from 1, got 0"),
    (dict(threads=True), "setting threads must be a whole number from 1, got True"),
    (dict(batch_invariant="no"), "setting batch_invariant must be True or False, got 'no'"),
    (dict(confirm_seconds=-1), "setting confirm_seconds must be a number of seconds from 0, got -1"),
    (dict(contxt=2048), "unknown setting 'contxt'; the settings are home, model, cache, cache_path, context"),
]


@pytest.mark.parametrize("changes, message", REPLACED)
def test_each_setting_is_checked_where_it_is_given(changes, message):
    with pytest.raises(ArgumentError, match=re.escape(message)):
        Settings.from_env(**changes)


def test_a_home_given_as_a_file_names_the_argument(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("")
    with pytest.raises(ArgumentError, match=re.escape(f"home points at '{file}', which is a file, not a folder; "
                                                      f"pass home= a folder (it is created if missing)")):
        Settings.from_env(home=file)


def test_the_environment_then_the_arguments(monkeypatch, home):
    monkeypatch.setenv("DUCKLLM_CONTEXT", "2048")
    monkeypatch.setenv("DUCKLLM_CACHE", "off")
    settings = Settings.from_env(threads=2)
    assert (settings.home, settings.context, settings.threads, settings.cache) == (home, 2048, 2, False)
    assert settings.with_cache(True).cache and settings.replace(context=None) == settings   # None: not given
    assert Engine().settings == Settings.from_env()


def test_cache_is_true_false_or_a_file_of_its_own(tmp_path, fake_runtime):
    query = "SELECT llm_clean('jOHN smiht').value"
    mine = tmp_path / "mine.sqlite"
    con = duckllm.connect(model="fake", cache=mine)
    assert con.execute(query).fetchone() == ("John Smiht",) and mine.exists()
    assert duckllm.connect(model="fake", cache=mine).execute(query).fetchone() == ("John Smiht",)
    assert len(fake_runtime.calls) == 1                                     # the second from that file
    off = duckllm.connect(model="fake", cache=False)
    assert off.execute("SELECT getvariable('duckllm_cache')").fetchone() == (False,)
    off.execute(query).fetchall()
    assert len(fake_runtime.calls) == 2


def test_a_registered_cursor_takes_its_settings_and_shares_the_databases_engine(fake_con):
    cursor = duckllm.register(fake_con.cursor(), cache=False)
    assert cursor.execute("SELECT getvariable('duckllm_cache'), getvariable('duckllm_model')").fetchone() == \
        (False, None)    # the engine's default model (fake) answers
    assert duckllm.sql.engine_of(cursor) is duckllm.sql.engine_of(fake_con)
    assert cursor.execute("SELECT llm_clean('x').value").fetchone() == ("X",)
