"""Settings: one validated object, made at the edge and passed down.

The edges are the CLI's flags, the environment (DUCKLLM_*), `connect()` and `register(con,
model=..., cache=...)`, and the dbt plugin's config. Each makes a Settings with
`Settings.from_env(**overrides)` (or `settings.replace(...)`); below the edge nothing reads
os.environ and nothing writes it. A bad value is an error here, naming the variable or argument and
the fix, before any query runs.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from duckllm.errors import ArgumentError
from duckllm.runtime.prefix_store import DEFAULT_MAX_MB

FALSE = ("0", "off", "false", "no")
TRUE = ("1", "on", "true", "yes")
SIZES = ("context", "parallel", "batch", "threads")     # whole numbers from 1
SWITCHES = ("cache", "batch_invariant", "progress", "verbose")


@dataclass(frozen=True)
class Settings:
    home: Path                          # models, result cache, speeds, shell history
    model: str | None = None            # the default model: catalog name or .gguf path
    cache: bool = True                  # read and write the result cache
    cache_path: Path | None = None      # the result cache's file; None: home / cache.sqlite
    context: int | None = None          # llama.cpp context cells; None: the runtime's default for its device
    parallel: int | None = None         # rows in flight at once; None: the device's default
    batch: int | None = None            # tokens per llama.cpp batch; None: the device's default
    threads: int | None = None          # CPU threads for llama.cpp; None: the physical cores
    batch_invariant: bool = True        # a row's answer does not depend on its neighbours (CPU)
    prefix_cache_mb: int = DEFAULT_MAX_MB   # shared prompts' KV states on disk, least recently used out; 0: off
    confirm_seconds: float = 60.0       # ask before a query estimated to take longer (terminal only)
    progress: bool | None = None        # the progress line; None: only on a terminal
    verbose: bool = False               # llama.cpp's own logs on stderr

    # ---- making one ----------------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        """The environment's settings (os.environ by default), then the overrides a caller
        passes (None means 'not given'), all validated."""
        env = os.environ if env is None else env
        read = _Reader(env)
        values = dict(
            home=read.home(),
            cache=read.switch("DUCKLLM_CACHE", True),
            context=read.whole("DUCKLLM_CONTEXT", like=4096),
            parallel=read.whole("DUCKLLM_PARALLEL", like=64),
            batch=read.whole("DUCKLLM_BATCH", like=512),
            threads=read.whole("DUCKLLM_THREADS", like=4, zero_is_default=True),
            batch_invariant=read.switch("DUCKLLM_BATCH_INVARIANT", True),
            prefix_cache_mb=read.whole("DUCKLLM_PREFIX_CACHE_MB", like=DEFAULT_MAX_MB, lowest=0),
            confirm_seconds=read.seconds("DUCKLLM_CONFIRM_SECONDS", 60.0),
            progress=read.switch("DUCKLLM_PROGRESS", None),
            verbose=read.switch("DUCKLLM_VERBOSE", False),
        )
        return cls(**{k: v for k, v in values.items() if v is not None}).replace(**overrides)   # unset: the default

    def replace(self, **changes) -> Settings:
        """A copy with the given (non-None) values, validated as an argument is."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ArgumentError(f"unknown setting {unknown[0]!r}; the settings are "
                                f"{', '.join(f.name for f in dataclasses.fields(self))}")
        given = {k: _checked(k, v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def with_cache(self, cache: bool | str | os.PathLike | None) -> Settings:
        """cache as connect() and register() take it: True or False (use the result cache or
        not), or the path of a result cache file (used); None leaves it as it is."""
        if cache is None or isinstance(cache, bool):
            return self.replace(cache=cache)
        if isinstance(cache, (str, os.PathLike)) and str(cache).strip():
            return self.replace(cache=True, cache_path=cache)
        raise ArgumentError(f"cache must be True, False or the path of a result cache file, got {cache!r}")

    # ---- derived -------------------------------------------------------------------------

    @property
    def result_cache_path(self) -> Path:
        return self.cache_path or self.home / "cache.sqlite"

    @property
    def shell_history(self) -> Path:
        return self.home / "shell_history"

    @property
    def speeds_path(self) -> Path:
        return self.home / "speed.json"


def _checked(name: str, value):
    """A setting given as an argument, checked: the error names the argument and what it takes."""
    if name == "home":
        return _usable_home(_path(name, value), "home", "pass home= a folder (it is created if missing)")
    if name == "cache_path":
        return _path(name, value).absolute()
    if name == "model":
        if not isinstance(value, str) or not value.strip():
            raise ArgumentError(f"model must be a catalog name such as 'smollm2-135m' or the path of a "
                                f".gguf file, got {value!r}")
        return value
    if name in SIZES:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(f"setting {name} must be a whole number from 1, got {value!r}")
        return value
    if name in SWITCHES:
        if not isinstance(value, bool):
            raise ArgumentError(f"setting {name} must be True or False, got {value!r}")
        return value
    if name == "prefix_cache_mb":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ArgumentError(f"setting prefix_cache_mb must be a whole number of MB from 0 (0: off), got {value!r}")
        return value
    if name == "confirm_seconds":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ArgumentError(f"setting confirm_seconds must be a number of seconds from 0, got {value!r}")
        return float(value)
    return value


def _path(name: str, value) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ArgumentError(f"setting {name} must be a path, got {value!r}")
    return Path(value).expanduser()


class _Reader:
    """Reads DUCKLLM_* variables; a value it cannot read is an error that shows a good one."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def raw(self, name: str) -> str:
        return self.env.get(name, "").strip()

    def whole(self, name: str, like: int, zero_is_default: bool = False, lowest: int = 1) -> int | None:
        raw = self.raw(name)
        if not raw:
            return None
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value == 0 and zero_is_default:
            return None
        lowest = 0 if zero_is_default else lowest
        if value < lowest:
            raise ArgumentError(f"{name}={raw!r} is not a whole number from {lowest}; set it like "
                                f"{name}={like}, or unset it for the default")
        return value

    def switch(self, name: str, default: bool | None) -> bool | None:
        raw = self.raw(name).lower()
        if not raw:
            return default
        if raw in TRUE:
            return True
        if raw in FALSE:
            return False
        raise ArgumentError(f"{name}={self.raw(name)!r} is neither on nor off; set it to 1 or 0, or unset it")

    def seconds(self, name: str, default: float) -> float:
        raw = self.raw(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise ArgumentError(f"{name}={raw!r} is not a number of seconds; set it like {name}={default:g}")
        return value

    def home(self) -> Path:
        fix = "set DUCKLLM_HOME to a folder (it is created if missing)"
        configured = self.raw("DUCKLLM_HOME")
        if configured:
            return _usable_home(Path(configured).expanduser(), "DUCKLLM_HOME", fix)
        return _usable_home(Path.home() / ".cache" / "duckllm", "the default home ~/.cache/duckllm", fix)


def _usable_home(path: Path, named: str, fix: str) -> Path:
    """The home folder, created if missing; a file in its place is an error that says so."""
    if path.exists() and not path.is_dir():
        raise ArgumentError(f"{named} points at {str(path)!r}, which is a file, not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArgumentError(f"cannot create the duckllm home {str(path)!r} ({e.strerror}); "
                            f"{fix.split(' (')[0]} you can write") from None
    return path
