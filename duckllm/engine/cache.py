"""The persistent result cache: one SQLite file, under the duckllm home unless the settings name
another (settings.result_cache_path).

Keys hash everything that shapes an answer: the model file's sha256, the task (function, prompt
version, arguments, options) and the input text. SQLite in WAL mode lets several processes read
and write at once; rows are written as they finish, so an interrupted query keeps them. A cache
that cannot be opened or written turns into a warning: queries still answer. One that can still be
read (a read-only disk, a full one) keeps serving the answers it holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

from duckllm.errors import DuckLLMError

SCHEMA = """CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL)"""
# tables beside the results that clear() empties: the proxy's examples, shares and text vectors
CLEARED_WITH_RESULTS = ("proxy_examples", "proxy_shares", "proxy_vectors")


def key_of(model_id: str, task_key: str, text: str) -> str:
    h = hashlib.sha256()
    for part in (model_id, task_key, text):
        h.update(part.encode("utf-8", errors="surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


class ResultCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._broken: str | None = None       # why it can be neither read nor written
        self._read_only: str | None = None    # why it can be read only

    def _db(self) -> sqlite3.Connection | None:
        """One SQLite connection per thread (DuckDB calls UDFs from several)."""
        if self._broken:
            return None
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = self._open()
            except sqlite3.Error as e:
                db = self._open_read_only()
                if db is None:
                    self._fail(f"cannot open {self.path} ({e})")
                    return None
                self._fail(f"cannot open {self.path} for writing ({e})", readable=True)
            self._local.db = db
        return db

    def _open(self, patience: float = 30.0) -> sqlite3.Connection:
        """The cache opened for reading and writing, in WAL mode. Processes opening a new cache
        at once race to switch it to WAL; SQLite answers the loser 'database is locked' at once,
        without waiting (a wait could deadlock), so it tries again."""
        deadline = time.monotonic() + patience
        while True:
            db = sqlite3.connect(self.path, timeout=patience, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(SCHEMA)
                return db
            except sqlite3.OperationalError as e:
                db.close()
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            except sqlite3.Error:
                db.close()
                raise

    def _open_read_only(self) -> sqlite3.Connection | None:
        """The cache opened for reading, where it exists and holds results; else None."""
        if not self.path.is_file():
            return None
        uri = self.path.resolve().as_uri() + "?mode=ro"
        # Reading a WAL database takes its -shm file, which a read-only disk or folder cannot
        # hold; there the file is opened as immutable (without locks) instead.
        shm_impossible = not os.access(self.path.parent, os.W_OK)
        for extra in ("", "&immutable=1") if shm_impossible else ("",):
            try:
                db = sqlite3.connect(uri + extra, uri=True, timeout=30, isolation_level=None)
                db.execute("SELECT count(*) FROM results WHERE key = ''").fetchone()
                return db
            except sqlite3.Error:
                continue
        return None

    def connection(self) -> sqlite3.Connection | None:
        """This thread's connection to the file, for data kept beside the results (the proxy's
        examples, duckllm.proxy.examples); None when the file cannot be opened."""
        return self._db()

    @property
    def writable(self) -> bool:
        return self._db() is not None and not self._read_only

    def failed(self, reason: str) -> None:
        """Data kept beside the results could not be written: warn once, as for the results."""
        self._fail(reason, readable=True)

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
        except (sqlite3.Error, ValueError) as e:     # ValueError: a damaged row
            self._fail(f"cannot read {self.path} ({e})")
        return found

    def put_many(self, function: str, items: list[tuple[str, dict]]) -> None:
        db = self._db()
        if db is None or not items or self._read_only:
            return
        now = time.time()
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                               [(k, function, json.dumps(v), now) for k, v in items])
        except sqlite3.Error as e:      # a full disk, a lost permission: reading may still work
            self._fail(f"cannot write {self.path} ({e})", readable=True)

    def stats(self) -> list[tuple[str, int]]:
        db = self._db()
        if db is None:
            return []
        return db.execute("SELECT function, count(*) FROM results GROUP BY 1 ORDER BY 1").fetchall()

    def clear(self) -> int:
        db = self._db()
        if db is None:
            return 0
        try:
            with db:
                n = db.execute("DELETE FROM results").rowcount
                # what was learned from those answers goes with them
                for table in CLEARED_WITH_RESULTS:
                    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
                        db.execute(f"DELETE FROM {table}")
            db.execute("VACUUM")
        except sqlite3.Error as e:
            raise DuckLLMError(f"cannot clear the result cache {self.path} ({e}); fix the file's "
                               f"permissions or free disk space, or delete the file") from e
        return n

    def _fail(self, reason: str, readable: bool = False) -> None:
        if self._broken or (readable and self._read_only):
            return      # said once
        if readable:
            self._read_only = reason
            state = "read-only for this process"
            kept = "cached answers are still used; new ones are computed but not kept"
        else:
            self._broken = reason
            state = "off for this process"
            kept = "answers are still computed but not kept"
        print(f"duckllm: warning: result cache {state}: {reason}. The query goes on: {kept}. To keep "
              f"them, free disk space or fix the file's permissions, or set DUCKLLM_HOME to a writable "
              f"directory.", file=sys.stderr)
