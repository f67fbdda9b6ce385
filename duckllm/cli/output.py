"""How query results are printed: `duckllm sql --mode` and the shell's `.mode`."""
from __future__ import annotations

import csv
import json
import sys

MODES = ("duckbox", "csv", "json", "markdown", "line", "list")


def show(relation, mode: str = "duckbox", out=None) -> None:
    out = out or sys.stdout
    if mode == "duckbox":   # DuckDB's own table, which prints to the process's stdout
        out.flush()
        relation.show(max_rows=10_000, max_width=10_000)
        return
    columns, rows = relation.columns, relation.fetchall()
    if mode == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else _text(v) for v in row] for row in rows])
    elif mode == "json":
        out.write(json.dumps([dict(zip(columns, row)) for row in rows], default=str, ensure_ascii=False,
                             indent=1) + "\n")
    elif mode == "markdown":
        cell = lambda v: _text(v).replace("|", "\\|")
        out.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
        out.writelines("| " + " | ".join(cell(v) for v in row) + " |\n" for row in rows)
    elif mode == "line":
        width = max(map(len, columns), default=0)
        out.write("\n\n".join("\n".join(f"{c.rjust(width)} = {_text(v)}" for c, v in zip(columns, row))
                            for row in rows) + "\n")
    elif mode == "list":
        out.write("|".join(columns) + "\n")
        out.writelines("|".join(_text(v) for v in row) + "\n" for row in rows)
    else:
        raise ValueError(f"unknown output mode {mode!r}; the modes are {', '.join(MODES)}")
    out.flush()


def _text(value) -> str:
    return "NULL" if value is None else str(value)
