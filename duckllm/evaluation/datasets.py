"""A labeled suite on disk: a manifest (datasets.json) naming, per dataset, its task, its file (CSV,
or Parquet exported from DuckDB) and its columns, in the format of the public suite duckllm is
measured on. Read at run time; every sample is drawn with one fixed seed, so runs compare.
"""
from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from duckllm.errors import ArgumentError

SEED = 20261124
# Bare labels mean little to a small model; a user would describe them the same way.
DESCRIPTIONS = {
    "sms_spam": {"ham": "an ordinary personal message between people (not spam)",
                 "spam": "unsolicited advertising, a prize, offer or scam message"},
}


def manifest(suite: Path) -> dict:
    return json.loads((Path(suite) / "datasets.json").read_text())


def default_suite() -> Path | None:
    """The public suite beside this checkout or the current directory, when it is there."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):     # the checkout: duckllm/evaluation/..
        candidate = root.parent / "shared" / "data"
        if (candidate / "datasets.json").exists():
            return candidate
    return None


def read_rows(suite: Path, spec: dict) -> list[dict]:
    """A dataset's rows as text: a CSV file, or a Parquet file (a table exported from DuckDB)."""
    path = Path(suite) / spec["file"]
    if path.suffix == ".parquet":
        import duckdb
        relation = duckdb.connect().sql(f"SELECT * FROM read_parquet('{path}')")
        return [{k: "" if v is None else str(v) for k, v in zip(relation.columns, row)} for row in relation.fetchall()]
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def labels_of(suite: Path, spec: dict) -> list[str]:
    if spec.get("labels"):
        return list(spec["labels"])
    return [l for l in (Path(suite) / spec["labels_file"]).read_text().splitlines() if l]


# ---- fixed-seed samples: duckllm bench draws ids; the classification benches draw rows ---------

def sample_ids(rows: list[dict], limit: int) -> list[list[dict]]:
    """A fixed-seed sample of `limit` ids, each with all its rows (several per id in extraction)."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_id[r["id"]].append(r)
    ids = sorted(by_id)
    return [by_id[i] for i in random.Random(SEED).sample(ids, min(limit, len(ids)))]


def sample_rows(rows: list, limit: int) -> list:
    """A fixed-seed sample of `limit` rows (bench/classify_quality.py)."""
    return random.Random(SEED).sample(rows, min(limit, len(rows)))


def shuffled(rows: list) -> list:
    """Every row in a fixed-seed order: a prefix is a sample, the rows after it fresh ones
    (bench/classify_options.py, bench/throughput.py)."""
    rows = list(rows)
    random.Random(SEED).shuffle(rows)
    return rows


@dataclass(frozen=True)
class Dataset:
    """One dataset of a suite: its manifest entry, and where its files are."""
    suite: Path
    name: str
    spec: dict

    @classmethod
    def open(cls, suite: Path, name: str) -> Dataset:
        specs = manifest(suite)
        if name not in specs:
            raise ArgumentError(f"no dataset {name!r} in {Path(suite) / 'datasets.json'}; it has {', '.join(specs)}")
        return cls(Path(suite), name, specs[name])

    @property
    def kind(self) -> str:
        """The task kind it is scored as: restaurant8k's slots and wdc_pave's values are asked
        another way than the extraction sets they are filed with."""
        return {"restaurant8k": "slots", "wdc_pave": "enrich"}.get(self.name, self.spec["task"])

    def rows(self) -> list[dict]:
        return read_rows(self.suite, self.spec)

    @property
    def labels(self) -> list[str]:
        return labels_of(self.suite, self.spec)

    @property
    def descriptions(self) -> dict[str, str]:
        return self.spec.get("descriptions") or DESCRIPTIONS.get(self.name, {})
