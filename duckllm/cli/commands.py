"""The duckllm command: a thin click client of the library."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import click
import duckdb
import sqlglot

from duckllm import store
from duckllm.cli import output
from duckllm.engine import cancel
from duckllm.errors import DuckLLMError
from duckllm.runtime import prefix_store
from duckllm.store import catalog


def _connect(db: str | None, model: str | None):
    from duckllm.sql import connect
    con = connect(db or ":memory:", model=model)
    # DuckDB's progress bar writes to stdout even when it is piped; duckllm's goes to stderr
    con.execute("SET enable_progress_bar = false")
    return con


def run_statements(con, sql: str, confirm=None, mode: str = "duckbox", out=None) -> None:
    """Run every statement; print the result of each that returns rows (output.MODES).
    confirm(statement) may veto a statement before it runs (ask_when_long). Ctrl-C cancels the
    running statement (KeyboardInterrupt); finished rows stay cached."""
    statements = con.extract_statements(sql)
    if not statements:
        raise click.UsageError("no SQL statement given")
    for statement in statements:
        if confirm is not None and not confirm(statement.query):
            click.echo("Not run.", err=True)
            continue
        if statement.expected_result_type == [duckdb.ExpectedResultType.QUERY_RESULT]:
            _interruptible(con, lambda: output.show(con.sql(statement.query), mode, out))
        else:  # DDL, INSERT, SET: like the duckdb shell, print nothing
            _interruptible(con, lambda: con.execute(statement.query))


def ask_when_long(con, threshold: float | None = None):
    """A confirm hook for run_statements: when a statement's llm_* calls are estimated to take
    longer than threshold seconds (DUCKLLM_CONFIRM_SECONDS, default 60), show the estimate and
    ask before running it."""
    from duckllm.sql import explain
    threshold = float(os.environ.get("DUCKLLM_CONFIRM_SECONDS", 60)) if threshold is None else threshold

    def confirm(query: str) -> bool:
        if "llm_" not in query.lower():
            return True
        try:
            estimates = explain.explain(con, query)
        except (DuckLLMError, duckdb.Error, sqlglot.errors.SqlglotError):
            return True    # not estimable before it runs (say, a table an earlier statement makes)
        if explain.total_seconds(estimates) < threshold:
            return True
        click.echo(explain.render(estimates), err=True)
        return click.confirm("This query will take a while. Run it?", default=False, err=True)
    return confirm


def _interruptible(con, work) -> None:
    """Run work on a worker thread so the main thread can take Ctrl-C and cancel it."""
    outcome: list[BaseException] = []

    def run():
        try:
            work()
        except BaseException as e:  # re-raised on the main thread
            outcome.append(e)
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        cancel.request(con)
        worker.join()
        raise
    if outcome:
        raise outcome[0]


def user_message(error: Exception) -> str:
    """DuckDB wraps a UDF's exception in its own words; keep only ours where it is one of ours."""
    text = str(error)
    for kind in ("ArgumentError: ", "ModelError: ", "DuckLLMError: "):
        if kind in text:
            return text.split(kind, 1)[1]
    return text


@click.group()
@click.version_option(package_name="duckllm")
def main():
    """LLM labeling, cleaning and enrichment as DuckDB SQL functions."""


# options several commands share
FILE = click.option("-f", "--file", "file", type=click.Path(exists=True, dir_okay=False), help="Read SQL from a file.")
DB = click.option("--db", type=click.Path(dir_okay=False), help="DuckDB database file (default: in memory).")
MODEL = click.option("--model", help="Catalog name or .gguf path (default: the catalog's default).")
MODE = click.option("--mode", type=click.Choice(output.MODES), default="duckbox", show_default=True,
                    help="How results are printed.")


@main.command()
@click.argument("query", required=False)
@FILE
@DB
@MODEL
@MODE
@click.option("-y", "--yes", is_flag=True, help="Do not ask before a long query (asked only on a terminal).")
def sql(query, file, db, model, mode, yes):
    """Run SQL with duckllm's functions and print the results."""
    text = _query_text(query, file)
    with _errors():
        con = _connect(db, model)
        interactive = sys.stdin.isatty() and sys.stderr.isatty() and not yes
        run_statements(con, text, confirm=ask_when_long(con) if interactive else None, mode=mode)


@main.command("explain")
@click.argument("query", required=False)
@FILE
@DB
@MODEL
def explain_command(query, file, db, model):
    """Estimate what a query asks of the model before running it: per llm_* call, the rows,
    distinct inputs, cached answers, prompt tokens and time on this machine."""
    from duckllm.sql.explain import explain, render
    text = _query_text(query, file)
    with _errors():
        click.echo(render(explain(_connect(db, model), text)))


def _query_text(query, file) -> str:
    if (query is None) == (file is None):
        raise click.UsageError("give a QUERY or -f FILE")
    return Path(file).read_text() if file else query


@main.command()
@click.argument("db", required=False)
@MODEL
def shell(db, model):
    """Interactive SQL prompt with duckllm's functions loaded."""
    from duckllm.cli.shell import Shell
    with _errors():
        con = _connect(db, model)
        Shell(con, confirm=ask_when_long(con) if sys.stdin.isatty() else None).loop()


@main.group()
def models():
    """List, fetch and locate models."""


@models.command("list")
def models_list():
    """Known models, their size and licence, and whether they are downloaded."""
    click.echo(f"{'name':22} {'size':>9}  {'licence':14} {'local':6} description")
    for spec in catalog.models().values():
        local = "yes" if (store.models_dir() / spec.file).is_file() else "no"
        size = f"{spec.size / 1e6:.0f} MB" if spec.size else "?"
        default = " (default)" if spec.name == catalog.DEFAULT_MODEL else ""
        click.echo(f"{spec.name:22} {size:>9}  {spec.license:14} {local:6} {spec.description}{default}")


@models.command("pull")
@click.argument("name")
def models_pull(name):
    """Fetch a model into the cache and verify it."""
    with _errors():
        spec = catalog.get(name)
        path = store.models_dir() / spec.file
        problem = store.verify(path, spec)
        if problem is None:
            click.echo(f"{spec.name} is already here and verified (licence {spec.license})", err=True)
            if spec.license_note:
                click.echo(spec.license_note, err=True)
        else:
            path = store.pull(spec)
        click.echo(str(path))


@models.command("path")
@click.argument("name", required=False)
def models_path(name):
    """Print the local .gguf path of NAME (default model when omitted), fetching it if needed."""
    with _errors():
        click.echo(str(store.resolve(name)))


@main.group()
def cache():
    """The persistent result cache, and the prompts' prefix states kept beside it."""


@cache.command("stats")
def cache_stats():
    """Cached results per function, where the cache lives, and the kept prompt prefix states."""
    from duckllm.engine.cache import ResultCache
    store_ = ResultCache()
    rows = store_.stats()
    size = store_.path.stat().st_size if store_.path.exists() else 0
    click.echo(f"cache: {store_.path} ({size / 1e6:.1f} MB)")
    for function, n in rows:
        click.echo(f"{function:20} {n:>10,} results")
    click.echo(f"{'total':20} {sum(n for _, n in rows):>10,} results")
    folder = _prefix_folder()
    states, size = prefix_store.usage(folder)
    click.echo(f"prompt prefix states: {folder} ({states:,} states, {size / 1e6:.1f} MB)")


@cache.command("clear")
def cache_clear():
    """Delete every cached result and every kept prompt prefix state."""
    from duckllm.engine.cache import ResultCache
    with _errors():
        click.echo(f"removed {ResultCache().clear():,} cached results")
    states, size = prefix_store.clear(_prefix_folder())
    click.echo(f"removed {states:,} prompt prefix states ({size / 1e6:.1f} MB)")


def _prefix_folder() -> Path:
    from duckllm.home import home
    return prefix_store.folder_in(home())


@main.command()
@click.option("--suite", "suite_dir", type=click.Path(path_type=Path, file_okay=False),
              help="folder with datasets.json (default: ../shared/data when it is there)")
@click.option("--datasets", help="comma-separated names from the manifest (default: all)")
@click.option("--limit", type=int, default=100, show_default=True, help="ids sampled per dataset (fixed seed)")
@click.option("--model", help="catalog name or .gguf path (default: the default model)")
@click.option("--baseline", is_flag=True, help="also ask the same model in free text, one completion per row")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("bench-results"),
              show_default=True, help="where results.md, results.json and the plots go")
def bench(suite_dir, datasets, limit, model, baseline, out):
    """Quality, calibration and speed of the functions on a labeled suite."""
    from duckllm.engine import Engine
    from duckllm.evaluation import report, suite
    suite_dir = suite_dir or suite.default_suite()
    if suite_dir is None or not (suite_dir / "datasets.json").exists():
        raise click.UsageError("no suite found: pass --suite DIR, a folder holding datasets.json "
                               "(the format of the public suite: task, file, columns, labels)")
    names = datasets.split(",") if datasets else list(suite.manifest(suite_dir))
    model = model or catalog.DEFAULT_MODEL
    engine = Engine(model)
    free = suite.FreeText(store.resolve(model)) if baseline else None
    results, started = [], time.perf_counter()
    for i, name in enumerate(names, 1):
        click.echo(f"duckllm bench: [{i}/{len(names)}] {name} ...", err=True)
        for result in suite.run_dataset(engine, suite_dir, name, limit, free):
            results.append(result)
            click.echo(f"  {report.markdown([report.row(result)]).splitlines()[-1]}", err=True)
        done = time.perf_counter() - started
        bar = "#" * round(20 * i / len(names))
        click.echo(f"  [{bar:<20}] {i}/{len(names)} datasets, {done:.0f}s, about "
                   f"{done / i * (len(names) - i):.0f}s to go", err=True)
    header = f"model {model}, {limit} ids per dataset (seed {suite.SEED}), suite {suite_dir}"
    click.echo(header)
    click.echo(report.markdown([report.row(r) for r in results] + report.overall(results)))
    written = report.write(out, header, results)
    if not any(p.suffix == ".png" for p in written):
        click.echo("duckllm bench: plots skipped: install matplotlib (pip install 'duckllm[bench]')", err=True)
    click.echo(f"duckllm bench: wrote {', '.join(str(p) for p in written)}", err=True)


@main.command("run")
@click.argument("query", required=False)
@click.option("--ray", "address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on Ray: a cluster address (auto, ray://host:10001), or none for a local cluster.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder for part-NNNNNN.parquet (on several machines: one they all mount).")
@MODEL
@click.option("--cache", help="A result cache file every worker shares, or 'off' (default: each node's own).")
@click.option("--workers", type=int, help="Workers (default: one per GPU, else one per node).")
@click.option("--gpus-per-worker", type=float, help="GPUs each worker holds (default 1 when the cluster has GPUs).")
@click.option("--cpus-per-worker", type=int, help="CPUs each worker asks Ray for and runs llama.cpp on.")
@click.option("--rows-per-shard", type=int, default=8192, show_default=True,
              help="Input rows per part; a multiple of 2048 keeps the answers those of one plain query.")
def run_command(query, address, output, model, cache, workers, gpus_per_worker, cpus_per_worker, rows_per_shard):
    """Run a row-mapping query shard by shard into Parquet parts, on Ray or in this process;
    a rerun computes only the parts not yet there."""
    from duckllm.distributed import run_query
    if query is None and address and " " in address:   # `--ray "SELECT ..."`: the flag had no address
        query, address = address, "local"
    if query is None:
        raise click.UsageError("give a QUERY: duckllm run [--ray [ADDRESS]] \"SELECT ...\" --output DIR")

    def report(shard):
        click.echo(f"duckllm run: [{shard['done']}/{shard['todo']}] {shard['part']}: {shard['rows']} rows, "
                   f"{shard['model_rows']} from the model, {shard['seconds']:.1f}s on {shard['worker']}", err=True)
    results = []

    def work():
        results.append(run_query(query, output, ray=address is not None, address=address, model=model, cache=cache,
                                 workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                 rows_per_shard=rows_per_shard, progress=report))
    with _errors():
        if address is None:   # Ctrl-C must reach the model mid-shard; on Ray the main thread takes it
            _interruptible(None, work)
        else:
            work()
    result = results[0]
    click.echo(f"{result.computed} parts computed, {result.skipped} already there, {result.shards} in all; "
               f"{result.rows} rows in {result.seconds:.1f}s ({result.model_rows} from the model, "
               f"{result.cache_hits} from the cache)", err=True)
    click.echo(f"read them with: {result.read_back()}")


@main.command()
@MODEL
def info(model):
    """Load a model and say which device runs it and how many layers are offloaded."""
    from duckllm.engine import Engine
    with _errors():
        details = Engine().runtime(model).describe()
    for key, value in details.items():
        click.echo(f"{key}: {value}")


class _errors:
    """Turn duckllm's and DuckDB's errors into one clean line and exit code 1."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, (DuckLLMError, duckdb.Error)):
            click.echo(f"Error: {user_message(error)}", err=True)
            sys.exit(1)
        if isinstance(error, KeyboardInterrupt):
            click.echo("Interrupted: the query was cancelled; rows finished so far are kept in the "
                       "result cache, so running it again computes only the rest.", err=True)
            # Finished rows are committed. Skip C++ teardown: after an interrupted query DuckDB's
            # and ggml's destructors can abort noisily at exit.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return False


if __name__ == "__main__":
    main()
