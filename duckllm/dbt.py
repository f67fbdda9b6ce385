"""A dbt-duckdb plugin: duckllm's SQL functions on every connection dbt opens.

profiles.yml:

    my_project:
      target: dev
      outputs:
        dev:
          type: duckdb
          path: target/my.duckdb
          plugins:
            - module: duckllm.dbt
              config:
                model: qwen2.5-coder-1.5b     # a catalog name or a .gguf path; default: duckllm's default
                cache: true                   # false: every run asks the model again

The plugin is an edge: it makes duckllm's Settings from its config and the environment (DUCKLLM_*)
when dbt creates it, so a bad value stops the run before any model is built. dbt-duckdb opens one
DuckDB connection and runs each statement on a cursor of it. A cursor is a connection of its own,
and duckllm's macros and its model and cache variables are TEMP, so the plugin registers on the
connection (the UDFs, once per database) and again on each cursor (the macros).
The dbt macros (duckllm.classify, duckllm.confidence_between, ...) are a dbt package of their own,
at package_path(); install it with `local:` in packages.yml.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from dbt.adapters.duckdb.plugins import BasePlugin
except ImportError as error:   # ModuleNotFoundError included
    raise ImportError("duckllm.dbt is a dbt-duckdb plugin and needs dbt-core and dbt-duckdb: "
                      "pip install 'duckllm[dbt]'") from error

from duckllm.errors import ArgumentError
from duckllm.resources import package_data
from duckllm.settings import Settings
from duckllm.sql import register

OPTIONS = {"model", "cache"}


def package_path() -> Path:
    """The dbt package of duckllm's macros (name: duckllm), shipped next to the SQL macros."""
    return package_data("sql_macros") / "dbt"


class Plugin(BasePlugin):
    """Registers duckllm on dbt-duckdb's connection and cursors; config: model, cache."""

    def initialize(self, plugin_config: dict[str, Any]):
        # dbt-duckdb merges the profile's DuckDB `settings:` into every plugin's config; those
        # keys are DuckDB's, anything else is ours and must be known.
        duckdb_settings = set((self.creds.settings or {}) if self.creds is not None else {})
        unknown = sorted(set(plugin_config) - OPTIONS - duckdb_settings)
        if unknown:
            raise ArgumentError(f"duckllm.dbt: unknown config {', '.join(map(repr, unknown))}; "
                                f"the options are {', '.join(sorted(OPTIONS))}")
        model = plugin_config.get("model")
        self.model = str(model) if model not in (None, "") else None
        cache = plugin_config.get("cache")       # not given: DUCKLLM_CACHE, else on
        self.settings = Settings.from_env(model=self.model, cache=None if cache is None else _boolean(cache))

    def configure_connection(self, conn):
        register(conn, settings=self.settings)

    def configure_cursor(self, cursor):
        register(cursor, settings=self.settings)


def _boolean(value) -> bool:
    """profiles.yml values arrive as YAML booleans, or as strings when they come from env_var()."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ArgumentError(f"duckllm.dbt: cache must be true or false, got {value!r}")
