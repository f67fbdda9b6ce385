"""Fitted calibrations, kept and applied: a table in the result cache's SQLite file, keyed by the
model file's sha256 and the task key, like the cached answers themselves.

Why the cache's file: it is already the one place duckllm keeps what a model and a task
produced, safe with several processes (WAL) and isolated per home or per `cache=` path; a
calibration is keyed the same way, so a new model or a changed prompt (a new task key) simply
finds none and confidences stay raw. It is a table of its own: clearing the cache
(`duckllm cache clear`) drops answers, which can be recomputed, not calibrations, which took
labeled rows to make.

A stored calibration is applied to every result of its task and model: each confidence it covers
is mapped, and the note says so ('confidence calibrated ...'), so a calibrated confidence is
never mistaken for a raw one. Storage that cannot be opened is a warning; answers keep their
raw confidences, unmarked.
"""
from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from duckllm.confidence.calibration import Map, answer_key

SCHEMA = """CREATE TABLE IF NOT EXISTS calibrations (
    model TEXT NOT NULL,
    task_key TEXT NOT NULL,
    function TEXT NOT NULL,
    calibration TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, task_key))"""
WHOLE = "*"         # the map of a result's one confidence (per label or field: keyed by its name)
# which result field is the answer, for maps with offsets by answer
ANSWER_FIELDS = {"llm_classify": "label", "llm_match": "match"}


def note(method: str, rows: int) -> str:
    return f"confidence calibrated ({method}, {rows} labeled rows)"


@dataclass
class Calibration:
    """What llm_calibrate fitted for one task on one model, and its report."""
    function: str
    maps: dict[str, Map]
    rows: int
    report: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"function": self.function, "maps": {k: m.to_json() for k, m in self.maps.items()},
                "rows": self.rows, "report": self.report}

    @staticmethod
    def from_json(data: dict) -> Calibration:
        return Calibration(data["function"], {k: Map.from_json(m) for k, m in data["maps"].items()},
                           data["rows"], data.get("report") or {})

    def apply(self, result: dict) -> dict:
        """The result with its confidences mapped and the note saying so (a copy)."""
        result = dict(result)
        whole, confidence = self.maps.get(WHOLE), result.get("confidence")
        if whole is None:
            return result
        if isinstance(result.get("labels"), list):      # llm_classify_multi: P(applies) per label
            result["labels"] = [{**x, "confidence": whole.one(x["confidence"], x["label"])}
                                for x in result["labels"]]
            return result                               # a list result has no note
        if isinstance(confidence, dict):        # llm_extract: a confidence per field, keyed by its name
            result["confidence"] = {name: whole.one(c, name) for name, c in confidence.items()}
        elif isinstance(confidence, (int, float)):
            answer = result.get(ANSWER_FIELDS.get(self.function, ""))
            result["confidence"] = whole.one(confidence, answer_key(answer))
        else:
            return result
        said = note(whole.method, self.rows)
        result["note"] = f"{result['note']}; {said}" if result.get("note") else said
        return result


class CalibrationStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._broken: str | None = None

    def _db(self) -> sqlite3.Connection | None:
        if self._broken:
            return None
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                _retry_locked(lambda: db.execute("PRAGMA journal_mode=WAL"))
                _retry_locked(lambda: db.execute(SCHEMA))
            except (sqlite3.Error, OSError) as e:
                self._broken = str(e)
                print(f"duckllm: warning: calibrations in {self.path} cannot be opened ({e}); confidences "
                      f"stay raw. Fix the file's permissions or set DUCKLLM_HOME to a writable directory.",
                      file=sys.stderr)
                return None
            self._local.db = db
        return db

    def get(self, model: str, task_key: str) -> Calibration | None:
        data = self.get_data(model, task_key)
        try:
            return None if data is None else Calibration.from_json(data)
        except (KeyError, TypeError) as e:
            print(f"duckllm: warning: a calibration in {self.path} cannot be read ({e}); confidences stay "
                  f"raw. Fit it again with llm_calibrate.", file=sys.stderr)
            return None

    def put(self, model: str, task_key: str, calibration: Calibration) -> None:
        """Raises sqlite3.Error: a calibration that cannot be kept is an error of llm_calibrate."""
        self.put_data(model, task_key, calibration.function, calibration.to_json())

    def get_data(self, model: str, key: str):
        """What is kept for a model and key (JSON data), or None."""
        db = self._db()
        if db is None:
            return None
        try:
            row = db.execute("SELECT calibration FROM calibrations WHERE model = ? AND task_key = ?",
                             (model, key)).fetchone()
            return json.loads(row[0]) if row else None
        except (sqlite3.Error, ValueError) as e:
            print(f"duckllm: warning: a calibration in {self.path} cannot be read ({e}); confidences stay "
                  f"raw. Fit it again with llm_calibrate.", file=sys.stderr)
            return None

    def put_data(self, model: str, key: str, function: str, data) -> None:
        db = self._db()
        if db is None:
            raise sqlite3.OperationalError(f"cannot open {self.path}: {self._broken}")
        with db:
            db.execute("INSERT OR REPLACE INTO calibrations VALUES (?, ?, ?, ?, ?)",
                       (model, key, function, json.dumps(data), time.time()))

    def delete(self, model: str, task_key: str) -> bool:
        db = self._db()
        if db is None:
            return False
        with db:
            return db.execute("DELETE FROM calibrations WHERE model = ? AND task_key = ?",
                              (model, task_key)).rowcount > 0


def _retry_locked(statement: Callable, patience: float = 30.0):
    """SQLite answers 'database is locked' at once to the loser of a race to switch to WAL."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


_stores: dict[Path, CalibrationStore] = {}
_stores_lock = threading.Lock()


def store_at(path: Path) -> CalibrationStore:
    with _stores_lock:
        return _stores.setdefault(Path(path), CalibrationStore(path))


def applier(path: Path, model: str, task_key: str) -> Callable[[dict], dict]:
    """What the engine applies to each result of a task: its calibration, or a plain copy."""
    if not Path(path).is_file():        # nothing was ever fitted (or cached) here
        return dict
    calibration = store_at(path).get(model, task_key)
    return dict if calibration is None else calibration.apply
