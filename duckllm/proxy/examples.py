"""The model's own answers kept as training rows for the proxy, beside the result cache.

The result cache keys answers by hashes, so it cannot say which text got which label; the proxy
needs the text. These rows live in a table of the cache's SQLite file, keyed like the cache (the
model file's sha256, the task's key without the agreement options, the text), written as each
answer finishes: an interrupted query keeps them, and the next one retrains from them (no
pickled model is kept: training from the rows is fast and deterministic). `duckllm cache clear`
removes them with the results they came from.

The sentence embedder's vectors of the examples are kept too (a text's vector is its own, see
features.py): a new process, a dbt run say, reads them instead of embedding every stored example
again (about 800 a second here).

Each row says whether the model answered it whatever the proxy thought of it (`drawn`: its
sample draw picked it, or its call sent all its rows to the model: a random row of its call) or
because the proxy chose so (it was unsure of it), or the cache held it. The proxy trains on
both, but checks its agreement on drawn rows only: the rows it was unsure of are its hardest,
and would make the check speak for rows unlike the ones it is about to answer. Each row also
keeps the model's confidence in its answer, which weighs the row in training.
"""
from __future__ import annotations

import functools
import hashlib
import sqlite3
import threading
import time
from typing import NamedTuple

import numpy as np

from duckllm.engine.cache import CLEARED_WITH_RESULTS, ResultCache

# the tables, named where the result cache clears them with the answers they came from
TABLE, SHARES, VECTORS = CLEARED_WITH_RESULTS
SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT PRIMARY KEY,          -- the result cache's key of the answer
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    text TEXT NOT NULL,
    label TEXT NOT NULL,
    created REAL NOT NULL,
    drawn INTEGER NOT NULL DEFAULT 0,   -- 1: answered whatever the proxy thought of it (see above)
    weight REAL NOT NULL DEFAULT 1)     -- the model's confidence in its answer"""
# a table written before a column existed gets it, with its default: rows from before `drawn`
# are training rows only, and rows from before `weight` weigh 1, as every row did then
ADDED_COLUMNS = {"drawn": "INTEGER NOT NULL DEFAULT 0", "weight": "REAL NOT NULL DEFAULT 1"}
INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_task ON {TABLE} (model, task)"
# what the proxy took in a task's latest call with agreement, for `duckllm explain`'s estimate
SHARES_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {SHARES} (
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    share REAL NOT NULL,           -- of the call's rows to compute, those the proxy answered
    rows INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, task))"""

VECTORS_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {VECTORS} (
    text_hash TEXT PRIMARY KEY,    -- the text's sha256 under the embedder's identity (embed.identity)
    vector BLOB NOT NULL,          -- float32, exactly as computed
    created REAL NOT NULL)"""
READ_AT_ONCE = 500                 # texts per query (SQLite limits a statement's parameters)


class Example(NamedTuple):
    """One of the model's answers, kept as a training row."""
    key: str            # the result cache's key of the answer
    text: str
    label: str          # the proxy's class for the answer
    drawn: bool         # answered whatever the proxy thought of it (see above)
    weight: float = 1.0     # the model's confidence in its answer: its unsure answers teach the proxy less


class ExampleStore:
    """Labeled rows per (model, task) in the result cache's file. Failures behave as the
    cache's own: a warning once, and the query goes on without keeping them."""

    def __init__(self, cache: ResultCache):
        self.cache = cache
        self._ready = threading.local()     # the table made on this thread's connection

    def _db(self) -> sqlite3.Connection | None:
        db = self.cache.connection()
        if db is not None and getattr(self._ready, "db", None) is not db:
            try:
                if self.cache.writable:
                    db.execute(SCHEMA)
                    _add_columns(db)
                    db.execute(INDEX)
                    db.execute(SHARES_SCHEMA)
                    db.execute(VECTORS_SCHEMA)
            except sqlite3.Error as e:
                self.cache.failed(f"cannot create the proxy's examples in {self.cache.path} ({e})")
            self._ready.db = db
        return db

    def mark(self) -> int:
        """The newest row's id: rows up to it are what the store held at this moment."""
        db = self._db()
        try:
            return db.execute(f"SELECT coalesce(max(rowid), 0) FROM {TABLE}").fetchone()[0] if db else 0
        except sqlite3.Error:    # no table yet (a read-only cache written before)
            return 0

    def rows(self, model: str, task: str, upto: int | None = None) -> list[Example]:
        """A task's stored answers (up to a mark), ordered by key, so the same rows come in the
        same order whatever order they were written in."""
        db = self._db()
        if db is None:
            return []
        try:
            # a read-only table written before a column existed: the column's default
            have = _columns(db)
            drawn = "drawn = 1" if "drawn" in have else "0"
            weight = "weight" if "weight" in have else "1.0"
            query = f"SELECT key, text, label, {drawn}, {weight} FROM {TABLE} WHERE model = ? AND task = ?"
            params: list = [model, task]
            if upto is not None:
                query += " AND rowid <= ?"
                params.append(upto)
            return [Example(key, text, label, bool(drawn), weight)
                    for key, text, label, drawn, weight in db.execute(query + " ORDER BY key", params)]
        except sqlite3.Error:
            return []

    def add(self, model: str, task: str, rows: list[Example]) -> None:
        """Keep answers; one stored already stays as it was (and keeps its place before or after
        a query's mark)."""
        now = time.time()
        self._write("examples", f"INSERT OR IGNORE INTO {TABLE} (key, model, task, text, label, created, drawn, "
                                f"weight) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(e.key, model, task, e.text, e.label, now, int(e.drawn), e.weight) for e in rows])

    def record_share(self, model: str, task: str, proxied: int, rows: int) -> None:
        """The proxy answered `proxied` of a call's `rows` to compute."""
        if rows:
            self._write("share", f"INSERT OR REPLACE INTO {SHARES} VALUES (?, ?, ?, ?, ?)",
                        [(model, task, proxied / rows, rows, time.time())])

    def last_share(self, model: str, task: str) -> float | None:
        """The share of rows the proxy answered in the task's latest call; None before any."""
        db = self._db()
        try:
            row = db.execute(f"SELECT share FROM {SHARES} WHERE model = ? AND task = ?", (model, task)).fetchone() \
                if db else None
        except sqlite3.Error:
            return None
        return None if row is None else row[0]

    def vectors(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The kept embedder vectors of those texts that have one."""
        db = self._db()
        if db is None or not texts:
            return {}
        hashes = {_text_hash(t): t for t in texts}
        keys, found = list(hashes), {}
        try:
            for i in range(0, len(keys), READ_AT_ONCE):
                part = keys[i:i + READ_AT_ONCE]
                for text_hash, blob in db.execute(f"SELECT text_hash, vector FROM {VECTORS} WHERE text_hash IN "
                                                  f"({', '.join('?' * len(part))})", part):
                    found[hashes[text_hash]] = np.frombuffer(blob, dtype=np.float32)
        except sqlite3.Error:
            return {}
        return found

    def keep_vectors(self, vectors: dict[str, np.ndarray]) -> None:
        now = time.time()
        self._write("vectors", f"INSERT OR IGNORE INTO {VECTORS} VALUES (?, ?, ?)",
                    [(_text_hash(t), np.asarray(v, dtype=np.float32).tobytes(), now) for t, v in vectors.items()])

    def _write(self, what: str, statement: str, rows: list[tuple]) -> None:
        """Run statement for each row in one transaction; a failure is the cache's warning."""
        db = self._db()
        if db is None or not rows or not self.cache.writable:
            return
        try:
            with db:
                db.executemany(statement, rows)
        except sqlite3.Error as e:
            self.cache.failed(f"cannot write the proxy's {what} to {self.cache.path} ({e})")

    def count(self) -> int:
        db = self._db()
        try:
            return db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] if db else 0
        except sqlite3.Error:
            return 0


@functools.cache
def _embedder_hash():
    """sha256 begun with the embedder's identity: a vector is kept under what made it."""
    from duckllm.proxy.features import EMBEDDER
    from duckllm.runtime.embed import identity
    return hashlib.sha256(identity(**EMBEDDER).encode())


def _text_hash(text: str) -> str:
    h = _embedder_hash().copy()
    h.update(text.encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()


def _columns(db: sqlite3.Connection) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({TABLE})")}


def _add_columns(db: sqlite3.Connection) -> None:
    """Give an older table the columns it lacks; another process may be doing the same."""
    have = _columns(db)
    for name in [n for n in ADDED_COLUMNS if n not in have]:
        try:
            db.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {ADDED_COLUMNS[name]}")
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e):
                raise
