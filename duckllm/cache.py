"""The persistent result cache: one SQLite file under the duckllm home.

Keys hash everything that shapes an answer: the model file's sha256, the task (function, prompt
version, arguments, options) and the input text. SQLite in WAL mode lets several processes read
and write at once; rows are written as they finish, so an interrupted query keeps them. A cache
that cannot be opened or written turns into a warning: queries still answer.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import threading
import time
from pathlib import Path

from .home import home

SCHEMA = """CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL)"""


def default_path() -> Path:
    return home() / "cache.sqlite"


def key_of(model_id: str, task_key: str, text: str) -> str:
    h = hashlib.sha256()
    for part in (model_id, task_key, text):
        h.update(part.encode("utf-8", errors="surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


class ResultCache:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_path()
        self._local = threading.local()
        self._broken: str | None = None

    def _db(self) -> sqlite3.Connection | None:
        """One SQLite connection per thread (DuckDB calls UDFs from several)."""
        if self._broken:
            return None
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(SCHEMA)
            except sqlite3.Error as e:
                self._fail(f"cannot open {self.path} ({e})")
                return None
            self._local.db = db
        return db

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        db = self._db()
        found: dict[str, dict] = {}
        if db is None or not keys:
            return found
        try:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for key, result in db.execute(f"SELECT key, result FROM results WHERE key IN ({marks})", chunk):
                    found[key] = json.loads(result)
        except sqlite3.Error as e:
            self._fail(f"cannot read {self.path} ({e})")
        return found

    def put_many(self, function: str, items: list[tuple[str, dict]]) -> None:
        db = self._db()
        if db is None or not items:
            return
        now = time.time()
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                               [(k, function, json.dumps(v), now) for k, v in items])
        except sqlite3.Error as e:
            self._fail(f"cannot write {self.path} ({e})")

    def stats(self) -> list[tuple[str, int]]:
        db = self._db()
        if db is None:
            return []
        return db.execute("SELECT function, count(*) FROM results GROUP BY 1 ORDER BY 1").fetchall()

    def clear(self) -> int:
        db = self._db()
        if db is None:
            return 0
        with db:
            n = db.execute("DELETE FROM results").rowcount
        db.execute("VACUUM")
        return n

    def _fail(self, reason: str) -> None:
        if not self._broken:
            print(f"duckllm: warning: result cache off for this process: {reason}. Answers are still "
                  f"computed; set DUCKLLM_HOME to a writable directory to keep them.", file=sys.stderr)
        self._broken = reason
