"""The duckllm command: a thin click client of the library."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import duckdb

import duckllm
from duckllm.cli import output, session
from duckllm.engine import Engine
from duckllm.runtime import prefix_store
from duckllm.settings import Settings
from duckllm.store import ModelStore, catalog

# ---- the edge: Settings made from the environment and the flags, then handed to the library ----

def _settings(**flags) -> Settings:
    """The environment's DUCKLLM_* settings with the command's flags (None: not given), validated
    here: a bad value stops the command with a line that names its fix (inside _errors)."""
    return Settings.from_env(**flags)


def _connect(db: str | None, settings: Settings) -> duckdb.DuckDBPyConnection:
    con = duckllm.connect(db or ":memory:", settings=settings)
    # DuckDB's progress bar writes to stdout even when it is piped; duckllm's goes to stderr
    con.execute("SET enable_progress_bar = false")
    return con


def _engine(settings: Settings) -> Engine:
    return Engine(settings)


def _store(settings: Settings) -> ModelStore:
    return ModelStore(settings.home)


def _ask(question: str) -> bool:
    """Ask on the terminal; Ctrl-C or Ctrl-D there answers no."""
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:
        click.echo(err=True)
        return False


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
        settings = _settings(model=model)
        con = _connect(db, settings)
        interactive = sys.stdin.isatty() and sys.stderr.isatty() and not yes
        confirm = session.ask_when_long(con, settings.confirm_seconds, _ask) if interactive else None
        if not session.run_statements(con, text, confirm=confirm, mode=mode):
            raise click.UsageError("no SQL statement given")


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
        click.echo(render(explain(_connect(db, _settings(model=model)), text)))


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
        settings = _settings(model=model)
        con = _connect(db, settings)
        confirm = session.ask_when_long(con, settings.confirm_seconds, _ask) if sys.stdin.isatty() else None
        Shell(con, confirm=confirm, history=settings.home / "shell_history").loop()


@main.group()
def models():
    """List, fetch and locate models."""


@models.command("list")
def models_list():
    """Known models, their size and licence, and whether they are downloaded."""
    with _errors():
        models_dir = _store(_settings()).models_dir   # a DUCKLLM_HOME that is a file: a clear error
    click.echo(f"{'name':22} {'size':>9}  {'licence':14} {'local':6} description")
    for spec in catalog.models().values():
        local = "yes" if (models_dir / spec.file).is_file() else "no"
        size = f"{spec.size / 1e6:.0f} MB" if spec.size else "?"
        default = " (default)" if spec.name == catalog.DEFAULT_MODEL else ""
        click.echo(f"{spec.name:22} {size:>9}  {spec.license:14} {local:6} {spec.description}{default}")


@models.command("pull")
@click.argument("name")
def models_pull(name):
    """Fetch a model into the cache and verify it."""
    with _errors():
        models = _store(_settings())
        spec = catalog.get(name)
        path = models.models_dir / spec.file
        problem = models.verify(path, spec)
        if problem is None:
            click.echo(f"{spec.name} is already here and verified (licence {spec.license})", err=True)
            if spec.license_note:
                click.echo(spec.license_note, err=True)
        else:
            path = models.pull(spec)
        click.echo(str(path))


@models.command("path")
@click.argument("name", required=False)
def models_path(name):
    """Print the local .gguf path of NAME (default model when omitted), fetching it if needed."""
    with _errors():
        settings = _settings(model=name)
        click.echo(str(_store(settings).resolve(settings.model)))


@main.group()
def cache():
    """The persistent result cache."""


@cache.command("stats")
def cache_stats():
    """Cached results per function, where the cache lives, and the kept prompt prefix states."""
    from duckllm.engine.cache import ResultCache
    with _errors():
        settings = _settings()
        store_ = ResultCache(settings.result_cache_path)
    rows = store_.stats()
    size = store_.path.stat().st_size if store_.path.exists() else 0
    click.echo(f"cache: {store_.path} ({size / 1e6:.1f} MB)")
    for function, n in rows:
        click.echo(f"{function:20} {n:>10,} results")
    click.echo(f"{'total':20} {sum(n for _, n in rows):>10,} results")
    from duckllm.proxy.examples import ExampleStore
    examples = ExampleStore(store_).count()
    if examples:        # the model's answers kept for agreement := (docs/proxy.md); clear removes them too
        click.echo(f"{'proxy examples':20} {examples:>10,} answers")
    folder = prefix_store.folder_in(settings.home)
    states, size = prefix_store.usage(folder)
    click.echo(f"prompt prefix states: {folder} ({states:,} states, {size / 1e6:.1f} MB)")


@cache.command("clear")
def cache_clear():
    """Delete every cached result and every kept prompt prefix state."""
    from duckllm.engine.cache import ResultCache
    with _errors():
        settings = _settings()
        click.echo(f"removed {ResultCache(settings.result_cache_path).clear():,} cached results")
    states, size = prefix_store.clear(prefix_store.folder_in(settings.home))
    click.echo(f"removed {states:,} prompt prefix states ({size / 1e6:.1f} MB)")


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
    from duckllm.evaluation import report, suite
    suite_dir = suite_dir or suite.default_suite()
    if suite_dir is None or not (suite_dir / "datasets.json").exists():
        raise click.UsageError("no suite found: pass --suite DIR, a folder holding datasets.json "
                               "(the format of the public suite: task, file, columns, labels)")
    names = datasets.split(",") if datasets else list(suite.manifest(suite_dir))
    model = model or catalog.DEFAULT_MODEL
    results, started = [], time.perf_counter()
    with _errors():
        engine = _engine(_settings(model=model))
        free = suite.FreeText(engine.store.resolve(model)) if baseline else None
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
        results.append(run_query(query, output, ray=address is not None, address=address, model=settings.model,
                                 cache=cache, workers=workers, gpus_per_worker=gpus_per_worker,
                                 cpus_per_worker=cpus_per_worker, rows_per_shard=rows_per_shard, progress=report,
                                 settings=settings))
    with _errors():
        settings = _settings(model=model)
        if address is None:   # Ctrl-C must reach the model mid-shard; on Ray the main thread takes it
            session.interruptible(None, work)
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
    with _errors():
        details = _engine(_settings(model=model)).runtime().describe()
    for key, value in details.items():
        click.echo(f"{key}: {value}")


class _errors:
    """Turn duckllm's and DuckDB's errors into one clean line and exit code 1."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, session.USER_ERRORS):
            click.echo(session.error_line(error), err=True)
            sys.exit(1)
        if isinstance(error, KeyboardInterrupt):
            click.echo(session.INTERRUPTED, err=True)
            # Finished rows are committed. Skip C++ teardown: after an interrupted query DuckDB's
            # and ggml's destructors can abort noisily at exit.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return False


if __name__ == "__main__":
    main()
