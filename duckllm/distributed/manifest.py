"""The output folder of a run: its parts, and the manifest that says what they are parts of, so a
rerun computes only the parts not there yet and a different query cannot mix in."""
from __future__ import annotations

import json
from pathlib import Path

from duckllm.distributed.shards import Plan, Shard
from duckllm.errors import ArgumentError

MANIFEST = "_duckllm_run.json"


def prepare_output(output: Path, plan_: Plan) -> list[Shard]:
    """Create or reopen the output folder; the shards whose parts are not there yet."""
    output.mkdir(parents=True, exist_ok=True)
    manifest = output / MANIFEST
    wanted = plan_.manifest()
    if manifest.exists():
        found = json.loads(manifest.read_text())
        if found != wanted:
            what = next(k for k in wanted if found.get(k) != wanted[k])
            raise ArgumentError(
                f"{output} holds parts of another run (its {what.replace('_', ' ')} differs: the input files, "
                f"the query, the model or --rows-per-shard changed); give a new --output folder, or delete "
                f"{output} to compute everything again")
    elif any(output.glob("*.parquet")):
        raise ArgumentError(f"{output} already holds Parquet files that duckllm run did not write; "
                            f"give an empty or new --output folder")
    else:
        manifest.write_text(json.dumps(wanted, indent=1))
    for stale in output.glob(".part-*.tmp"):   # a worker that died mid-write
        stale.unlink(missing_ok=True)
    return [s for s in plan_.shards if not (output / s.part).exists()]
