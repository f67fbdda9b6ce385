"""Prompt prefix states kept on disk: the file store (verified, bounded, safe with several writers)
and, on the real small model, answers bit for bit those of an evaluated prefix."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SMALL_MODEL

from duckllm.cli.commands import main
from duckllm.engine.cache import ResultCache
from duckllm.errors import ArgumentError
from duckllm.runtime import prefix_store
from duckllm.runtime.prefix_store import PrefixStore
from duckllm.settings import Settings

KEY = bytes(range(32))


def key(n: int) -> bytes:
    return n.to_bytes(32, "big")


def state_file(store: PrefixStore, k: bytes = KEY) -> Path:
    return store.path_of(k)


# ---- the file store --------------------------------------------------------------------------

def test_a_state_is_read_back_whole_and_a_read_touches_it(tmp_path):
    store = PrefixStore(tmp_path, "m")
    store.write(KEY, 7, b"kv" * 1000)
    os.utime(state_file(store), (1000, 1000))
    assert store.read(KEY, 7) == b"kv" * 1000
    assert state_file(store).stat().st_mtime > 1000
    assert prefix_store.usage(tmp_path) == (1, state_file(store).stat().st_size)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "header only", "empty", "other key", "other length"])
def test_a_damaged_or_mismatched_file_is_ignored_removed_and_replaced(tmp_path, damage):
    store = PrefixStore(tmp_path, "m")
    store.write(KEY, 7, b"x" * 5000)
    path = state_file(store)
    data = bytearray(path.read_bytes())
    tokens = 7
    if damage == "flip a byte":
        data[-100] ^= 1
        path.write_bytes(data)
    elif damage == "truncate":
        path.write_bytes(data[:-1000])
    elif damage == "header only":
        path.write_bytes(data[:prefix_store._HEADER.size])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "other key":          # a file under a name that is not its key
        store.write(key(1), 7, b"y" * 5000)
        os.replace(state_file(store, key(1)), path)
    else:                                # the same key for another prompt length
        tokens = 8
    assert store.read(KEY, tokens) is None
    assert not path.exists()
    store.write(KEY, tokens, b"z" * 5000)
    assert store.read(KEY, tokens) == b"z" * 5000


def test_the_least_recently_used_states_go_first_past_the_cap(tmp_path):
    size = 1000 + prefix_store._HEADER.size
    store = PrefixStore(tmp_path, "m", max_bytes=3 * size)
    for n in range(3):
        store.write(key(n), 1, b"s" * 1000)
        os.utime(state_file(store, key(n)), (1000 + n, 1000 + n))    # written in the order 0, 1, 2
    assert store.read(key(0), 1) is not None                           # 0 used again: 1 is now the oldest
    store.write(key(3), 1, b"s" * 1000)
    kept = {n for n in range(4) if state_file(store, key(n)).exists()}
    assert kept == {0, 2, 3}
    assert prefix_store.usage(tmp_path)[1] <= 3 * size


def test_a_state_larger_than_the_cap_is_not_kept(tmp_path):
    store = PrefixStore(tmp_path, "m", max_bytes=1000)
    store.write(KEY, 1, b"s" * 2000)
    assert prefix_store.usage(tmp_path) == (0, 0)


def test_temporary_files_of_dead_writers_are_swept(tmp_path):
    old, fresh = tmp_path / ".dead.tmp", tmp_path / ".writing.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(old, (1000, 1000))
    PrefixStore(tmp_path, "m").write(KEY, 1, b"s")
    assert not old.exists() and fresh.exists()
    assert prefix_store.usage(tmp_path)[0] == 1        # temporary files are not states


def test_an_unwritable_folder_is_one_warning_and_no_error(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("in the way")
    store = PrefixStore(blocked / "prefix", "m")
    store.write(KEY, 1, b"s")
    store.write(key(1), 1, b"s")
    assert store.read(KEY, 1) is None
    err = capsys.readouterr().err
    assert err.count("warning: prompt prefix states are not kept for this process") == 1
    assert "set DUCKLLM_HOME to a writable directory" in err


def test_the_key_covers_the_model_the_settings_the_build_and_the_tokens(tmp_path):
    a, b = PrefixStore(tmp_path, "model-a"), PrefixStore(tmp_path, "model-b")
    settings, build = {"n_ctx": 4096, "kv_cache": "bf16"}, {"llama_cpp_python": "0.3.36"}
    basis = a.basis(settings, build)
    keys = {PrefixStore.key(basis, [1, 2, 3]), PrefixStore.key(basis, [1, 2, 4]),
            PrefixStore.key(b.basis(settings, build), [1, 2, 3]),
            PrefixStore.key(a.basis({**settings, "kv_cache": "f16"}, build), [1, 2, 3]),
            PrefixStore.key(a.basis(settings, {"llama_cpp_python": "0.3.37"}), [1, 2, 3])}
    assert len(keys) == 5
    assert PrefixStore.key(a.basis(dict(reversed(settings.items())), build), [1, 2, 3]) in keys


WRITER = """
import sys
from pathlib import Path
from duckllm.runtime.prefix_store import PrefixStore
folder, me = Path(sys.argv[1]), int(sys.argv[2])
store = PrefixStore(folder, "m", max_bytes=2_000_000)
shared = bytes(32)
for i in range(40):
    store.write(shared, 1, bytes([me]) * 300_000)                   # every writer, one key
    store.write((me * 1000 + i).to_bytes(32, "big"), 1, bytes([me]) * 200_000)   # its own keys
    got = store.read(shared, 1)
    assert got is None or got == bytes([got[0]]) * 300_000, "a mixed or partial state"
"""


def test_several_processes_write_read_and_evict_at_once(tmp_path):
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(k)]) for k in (1, 2, 3)]
    store = PrefixStore(tmp_path, "m", max_bytes=2_000_000)
    seen = set()
    while any(w.poll() is None for w in writers):
        got = store.read(bytes(32), 1)
        if got is not None:
            assert got == bytes([got[0]]) * 300_000
            seen.add(got[0])
        time.sleep(0.002)
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    assert seen <= {1, 2, 3}
    assert not list(tmp_path.glob(".*.tmp"))
    store.evict()
    assert prefix_store.usage(tmp_path)[1] <= 2_000_000


# ---- the setting and the CLI -------------------------------------------------------------------

def test_the_setting_sizes_and_turns_it_off(monkeypatch):
    assert Settings.from_env({}).prefix_cache_mb == 1024
    assert Settings.from_env({"DUCKLLM_PREFIX_CACHE_MB": "0"}).prefix_cache_mb == 0
    with pytest.raises(ArgumentError, match="DUCKLLM_PREFIX_CACHE_MB='-1' is not a whole number from 0"):
        Settings.from_env({"DUCKLLM_PREFIX_CACHE_MB": "-1"})
    with pytest.raises(ArgumentError, match="prefix_cache_mb must be a whole number of MB from 0"):
        Settings.from_env({}).replace(prefix_cache_mb=-5)
    with pytest.raises(ArgumentError, match="DUCKLLM_PREFIX_CACHE_MB='lots' is not a whole number from 0"):
        Settings.from_env({"DUCKLLM_PREFIX_CACHE_MB": "lots"})


def test_cache_stats_and_clear_count_the_prefix_states(tmp_path, monkeypatch):
    folder = tmp_path / "prefix"
    monkeypatch.setattr(prefix_store, "folder_in", lambda home: folder)
    monkeypatch.setenv("DUCKLLM_HOME", str(tmp_path))
    ResultCache(tmp_path / "cache.sqlite").put_many("llm_classify", [("k", {"label": "a"})])
    store = PrefixStore(folder, "m")
    store.write(key(1), 1, b"s" * 150_000)
    store.write(key(2), 1, b"s" * 150_000)
    stats = CliRunner().invoke(main, ["cache", "stats"]).output
    assert f"{'llm_classify':20} {1:>10,} results" in stats            # the result cache's lines stay
    assert f"prompt prefix states: {folder} (2 states, 0.3 MB)" in stats
    cleared = CliRunner().invoke(main, ["cache", "clear"]).output
    assert cleared == "removed 1 cached results\nremoved 2 prompt prefix states (0.3 MB)\n"
    assert prefix_store.usage(folder) == (0, 0)


# ---- on the real small model -------------------------------------------------------------------

LABELS = ["refund", "delivery", "account", "card_lost", "card_arrival", "exchange_rate", "top_up",
          "transfer_failed", "pin_blocked", "cash_withdrawal"]
TEXTS = ["my card never came in the post", "I want my money back", "how do I change my PIN",
         "the ATM kept my cash", "what rate do you use for euros", "my transfer did not go through",
         "add money to my account", "someone stole my card", "where is my new card"]


class CountingStore(PrefixStore):
    """A PrefixStore that counts the states it found."""
    loaded = 0

    def read(self, key, n_tokens):
        data = super().read(key, n_tokens)
        self.loaded += data is not None
        return data


def answers(runtime, labels=LABELS, texts=TEXTS):
    from duckllm.tasks import classify
    prompt = runtime.format.split(list(classify.build(labels).messages))
    chosen = runtime.choose(prompt, texts, labels)
    written = runtime.generate(prompt, texts[:2], 4)
    return [(c.index, c.token_logprobs, c.choice_logprob) for c in chosen], \
        [(g.text, g.token_logprobs) for g in written]


def runtime(path, store=None, **settings):
    from duckllm.prompt_format import FORMATS
    from duckllm.runtime.llama import LlamaRuntime
    return LlamaRuntime(path, FORMATS["chatml"], n_parallel=8, prefix_store=store, **settings)


@pytest.mark.integration
def test_a_loaded_prefix_answers_bit_for_bit_as_an_evaluated_one(small_model_path, tmp_path):
    """Nine rows in flight (eight at once) and each row alone: answers and log-probabilities equal
    to the last bit whether the shared prompt was evaluated (no store; store empty) or loaded."""
    plain = runtime(small_model_path)
    evaluated = answers(plain)
    alone = [answers(plain, texts=[t]) for t in TEXTS[:2]]
    plain.close()
    store = CountingStore(tmp_path, "sha")
    first = runtime(small_model_path, store)
    assert answers(first) == evaluated and store.loaded == 0
    first.close()
    assert prefix_store.usage(tmp_path)[0] == 1
    store = CountingStore(tmp_path, "sha")
    second = runtime(small_model_path, store)
    assert answers(second) == evaluated
    assert store.loaded == 1
    assert [answers(second, texts=[t]) for t in TEXTS[:2]] == alone    # batch invariance kept
    second.close()


@pytest.mark.integration
def test_a_prompt_that_comes_back_is_loaded_into_the_cells_it_was_evaluated_in(small_model_path, tmp_path):
    """One process, two label sets in turn: the first comes back from disk where the other had been,
    and answers as when it was evaluated in a fresh context."""
    store = CountingStore(tmp_path, "sha")
    rt = runtime(small_model_path, store)
    before = answers(rt)
    other = answers(rt, labels=LABELS[::-1])
    assert store.loaded == 0 and prefix_store.usage(tmp_path)[0] == 2
    assert answers(rt) == before and store.loaded == 1
    assert answers(rt, labels=LABELS[::-1]) == other and store.loaded == 2
    rt.close()


@pytest.mark.integration
def test_a_state_llama_cpp_rejects_is_evaluated_and_replaced(small_model_path, tmp_path):
    """A file that verifies but that llama.cpp cannot load (its payload garbage): the prompt is
    evaluated instead, answers stay, and the file is replaced by the real state."""
    plain = runtime(small_model_path)
    evaluated = answers(plain, texts=TEXTS[:2])
    plain.close()
    rt = runtime(small_model_path, PrefixStore(tmp_path, "sha"))
    answers(rt, texts=TEXTS[:1])
    rt.close()
    path, = tmp_path.glob("*.kvstate")
    real = path.read_bytes()
    store = CountingStore(tmp_path, "sha")
    n_tokens = prefix_store._HEADER.unpack_from(real)[3]
    store.write(bytes.fromhex(path.name.split(".")[0]), n_tokens, bytes(range(256)) * 64)
    rt = runtime(small_model_path, store)
    assert answers(rt, texts=TEXTS[:2]) == evaluated and store.loaded == 1
    rt.close()
    assert path.read_bytes() == real


@pytest.mark.integration
def test_other_context_settings_keep_states_of_their_own(small_model_path, tmp_path):
    store = CountingStore(tmp_path, "sha")
    for settings in ({}, {"n_batch": 256}, {"batch_invariant": False}):    # the last: an f16 cache
        rt = runtime(small_model_path, store, **settings)
        answers(rt, texts=TEXTS[:1])
        rt.close()
    assert store.loaded == 0 and prefix_store.usage(tmp_path)[0] == 3


@pytest.mark.integration
def test_a_new_process_loads_what_the_last_one_kept(home):
    """Two `duckllm sql` processes with the result cache off: the first evaluates the shared prompt
    and keeps its state, the second loads it; both print the same answer, to the last digit."""
    query = f"SELECT llm_classify('my card never came in the post', {LABELS}) AS r"
    env = dict(os.environ, DUCKLLM_HOME=str(home), DUCKLLM_CACHE="0", DUCKLLM_PROGRESS="0")

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "duckllm.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout
    first = cli("sql", "--model", SMALL_MODEL, "--mode", "json", query)
    kept = list((home / "prefix").glob("*.kvstate"))
    assert len(kept) == 1
    written = kept[0].stat()
    time.sleep(0.01)
    assert cli("sql", "--model", SMALL_MODEL, "--mode", "json", query) == first
    read = kept[0].stat()
    assert read.st_ino == written.st_ino and read.st_mtime_ns > written.st_mtime_ns   # touched, not rewritten
    assert "(1 states," in cli("cache", "stats")
    assert "removed 1 prompt prefix states" in cli("cache", "clear")
    assert not list((home / "prefix").glob("*.kvstate"))
