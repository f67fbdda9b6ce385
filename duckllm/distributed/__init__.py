"""Past one machine: duckllm queries and duckllm columns on a Ray cluster, through Ray Data.

run_query: a row-mapping query (llm_* functions in SELECT and WHERE over read_parquet, read_csv
or read_json of one or many files) is cut into shards, row ranges of its input files. A shard's
SQL is the query with its table function narrowed to that range (a sqlglot rewrite). Workers are
Ray Data actors, each holding one DuckDB connection with duckllm (so one loaded model): a worker
runs a shard and writes DIR/part-NNNNNN.parquet under a temporary name, then renames it. A part
that exists is never computed again, so a rerun after a failure computes only the unfinished
shards; DIR/_duckllm_run.json records what the parts are of, so a different query cannot mix in.

with_columns: duckllm functions over a column of a ray.data.Dataset: each Arrow batch is a table
that DuckDB reads in place, and the SQL expressions add STRUCT columns to it.

Both answer through the same engine as a local query (batching, dedup, result cache), on each
worker's result cache ($DUCKLLM_HOME/cache.sqlite of its node) or one shared cache file.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import duckdb
import sqlglot
from sqlglot import exp

from duckllm import store
from duckllm.errors import ArgumentError, DuckLLMError
from duckllm.sql.explain import FROM, WITH
from duckllm.store import catalog

READERS = {"read_parquet": "parquet", "parquet_scan": "parquet", "read_csv": "csv", "read_csv_auto": "csv",
           "read_json": "json", "read_json_auto": "json", "read_ndjson": "json", "read_ndjson_auto": "json"}
MANIFEST = "_duckllm_run.json"
VIRTUAL_COLUMNS = ("filename", "file_row_number")   # file_index is the shards' own
_STAR_EXCEPT = "except_" if "except_" in exp.Star.arg_types else "except"
# A multiple of DuckDB's 2048-row vector: over Parquet (row groups of 122880 rows from DuckDB, 1Mi
# from pyarrow) a shard is then made of the same vectors the single query hands the functions,
# so llama.cpp decodes the same rows together and the answers are the same to the last digit.
DEFAULT_ROWS_PER_SHARD = 8192


class ShardError(DuckLLMError):
    """A shard could not be computed; the parts already written are kept."""


class NotRowMapping(ArgumentError):
    """The query needs rows of more than one shard (or batch)."""

    def __init__(self, reason: str, fix: str):
        super().__init__(f"duckllm run cannot split this query into shards: {reason}. {fix}")
        self.reason = reason


# --- the query: is it row-mapping, and what does it read ---------------------------------------

@dataclass(frozen=True)
class Query:
    """A row-mapping query, its input files made absolute (workers do not share our cwd)."""
    sql: str                    # normalized by sqlglot, paths absolute
    paths: tuple[str, ...]      # the table function's paths as written (globs not expanded)


def _refuse(reason: str, fix: str):
    raise NotRowMapping(reason, fix)


def _aggregate_names() -> frozenset[str]:
    """DuckDB's aggregate functions, including ones sqlglot does not know (histogram, ...)."""
    rows = duckdb.connect().execute(
        "SELECT DISTINCT lower(function_name) FROM duckdb_functions() WHERE function_type = 'aggregate'").fetchall()
    return frozenset(r[0] for r in rows)


def check_row_mapping(select: exp.Select, output_hint: str = "DIR") -> None:
    """Refuse what needs rows of more than one shard; each refusal names a fix.
    Subqueries are the user's own (read in full by every worker), so only the top level counts."""
    read_back = f"SELECT ... FROM read_parquet('{output_hint}/*.parquet')"
    if select.args.get("group") or select.args.get("having"):
        _refuse("GROUP BY needs the rows of every shard",
                f"Run the row-level part (the llm_* calls) with duckllm run, then aggregate its output "
                f"with DuckDB: {read_back} GROUP BY ...")
    if select.args.get("distinct"):
        _refuse("DISTINCT compares rows across shards",
                f"Drop DISTINCT here and apply it to the output: SELECT DISTINCT ... FROM "
                f"read_parquet('{output_hint}/*.parquet')")
    if select.args.get("order"):
        _refuse("ORDER BY sorts across shards",
                f"Drop it: the output keeps the input's order (parts are numbered in input order); "
                f"sort when you read it: {read_back} ORDER BY ...")
    if select.args.get("limit") or select.args.get("offset"):
        _refuse("LIMIT/OFFSET pick rows across the whole input",
                "Try the query on a few rows with duckllm sql and LIMIT, or give duckllm run fewer input files")
    if select.args.get("sample") or select.find(exp.TableSample):
        _refuse("a SAMPLE draws rows at random across the whole input",
                "Sample the input into a file first (COPY (SELECT * FROM ... USING SAMPLE ...) TO 'sample.parquet') "
                "and run on that file")
    if select.args.get("qualify"):
        _refuse("QUALIFY filters on window functions, which see rows of other shards",
                f"Compute the window on the output instead: {read_back} QUALIFY ...")
    aggregates = _aggregate_names()
    for node in select.walk(prune=lambda n: isinstance(n, exp.Query) and n is not select):
        if isinstance(node, exp.Window):
            _refuse(f"the window function {node.this.sql('duckdb')} OVER (...) sees rows of other shards",
                    f"Compute it on the output instead: {read_back}")
        if isinstance(node, exp.AggFunc) or (isinstance(node, exp.Anonymous) and node.name.lower() in aggregates):
            _refuse(f"the aggregate {node.sql('duckdb')} needs the rows of every shard",
                    f"Run the row-level part (the llm_* calls) with duckllm run, then aggregate its output "
                    f"with DuckDB: {read_back}")


def _reader_name(function: exp.Expression) -> str | None:
    if isinstance(function, exp.Anonymous):
        return function.name.lower()
    if isinstance(function, exp.Func):
        return function.sql_name().lower()
    return None


def _path_argument(function: exp.Expression) -> exp.Expression:
    """The first positional argument of a table function (sqlglot keeps it in `this` or `expressions`)."""
    first = function.args.get("this")
    if not isinstance(first, exp.Expression) or isinstance(first, exp.Identifier):
        first = (function.expressions or [None])[0]
    return first


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def parse(sql: str, output_hint: str = "DIR") -> Query:
    """Check that sql is one row-mapping SELECT over one file reader; its paths made absolute."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as e:
        raise ArgumentError(f"cannot read the query: {e}") from None
    if len(statements) != 1:
        _refuse(f"it holds {len(statements)} statements", "Give one SELECT per duckllm run")
    select = statements[0]
    if isinstance(select, exp.SetOperation):
        _refuse("UNION/INTERSECT/EXCEPT combine several queries",
                "Run each SELECT as its own duckllm run (its own --output), then combine the outputs with DuckDB")
    if not isinstance(select, exp.Select):
        _refuse(f"it is a {select.key.upper()} statement, not a SELECT", "Give a SELECT over read_parquet(...), "
                "read_csv(...) or read_json(...); write its output to files with --output")
    if select.args.get(WITH):
        _refuse("it has a WITH clause", "Put the file reader directly in FROM: SELECT ... FROM read_parquet('...')")
    if select.args.get("joins"):
        _refuse("a JOIN pairs rows of different shards",
                "Join with DuckDB first and write the joined rows to Parquet, then run on that file "
                "(or join the output afterwards)")
    source = _from(select)
    table = source.this if source else None
    function = table.this if isinstance(table, exp.Table) else None
    if _reader_name(function) not in READERS:
        shown = table.sql("duckdb") if table is not None else "nothing"
        _refuse(f"it reads FROM {shown}, and each worker must read its own part of the input from files",
                "Read files in FROM: read_parquet('data/*.parquet'), read_csv('a.csv') or read_json('x.json') "
                "(one path, a glob or a list); a table of a database can be exported first with "
                "COPY tbl TO 'tbl.parquet'")
    check_row_mapping(select, output_hint)

    argument = _path_argument(function)
    items = argument.expressions if isinstance(argument, exp.Array) else [argument]
    if not items or not all(isinstance(i, exp.Literal) and i.is_string for i in items):
        _refuse(f"the path {argument.sql('duckdb') if argument else '(none)'} is not a string or a list of strings",
                "Give the files as 'data/*.parquet' or ['a.csv', 'b.csv']")
    paths = tuple(i.this for i in items)
    absolute = exp.Array(expressions=[exp.Literal.string(_absolute(p)) for p in paths])
    argument.replace(absolute)
    return Query(select.sql("duckdb"), paths)


# --- shards: row ranges of the input files -------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    index: int          # position in input order; names the part
    file_index: int     # which file of the plan's list
    offset: int         # first row of the file in this shard
    rows: int

    @property
    def part(self) -> str:
        return f"part-{self.index:06d}.parquet"


@dataclass(frozen=True)
class Plan:
    query: Query
    model: str | None
    files: tuple[str, ...]          # every input file, in the order DuckDB reads them
    file_rows: tuple[int, ...]
    rows_per_shard: int
    shards: tuple[Shard, ...]
    exposed: tuple[str, ...] = ()   # virtual columns the query reads

    def manifest(self) -> dict:
        return {"query": self.query.sql, "model": self.model, "files": list(self.files),
                "file_rows": list(self.file_rows), "rows_per_shard": self.rows_per_shard}


def _from(select: exp.Select) -> exp.From | None:
    return select.args.get(FROM)


def _reader(select: exp.Select) -> exp.Expression:
    return _from(select).this.this


def _with_files(sql: str, files: tuple[str, ...]) -> exp.Select:
    """The query with its reader's path replaced by the explicit file list: every shard then reads
    the same files in the same order, even if a glob would match new files meanwhile."""
    select = sqlglot.parse_one(sql, read="duckdb")
    _path_argument(_reader(select)).replace(exp.Array(expressions=[exp.Literal.string(f) for f in files]))
    return select


def shard_sql(sql: str, files: tuple[str, ...], shard: Shard, exposed: tuple[str, ...] = ()) -> str:
    """The query over one shard: its reader becomes a subquery of that file's row range.
    file_index is DuckDB's virtual column (not in *); with the input order kept (DuckDB's default),
    LIMIT/OFFSET over one file's rows is a stable row range. Parquet skips to the range; CSV and
    JSON are read from the file's start. The virtual columns the query reads (exposed: filename,
    file_row_number) pass through the subquery as real ones, so every * leaves them out again."""
    select = _with_files(sql, files)
    if exposed:
        excluded = [exp.column(name) for name in exposed]
        for star in select.walk(prune=lambda n: isinstance(n, exp.Query) and n is not select):
            if isinstance(star, exp.Star):
                star.set(_STAR_EXCEPT, list(star.args.get(_STAR_EXCEPT) or []) + [c.copy() for c in excluded])
    table = _from(select).this
    rows = (exp.select("*", *[exp.column(name) for name in exposed]).from_(exp.Table(this=table.this.copy()))
            .where(exp.EQ(this=exp.column("file_index"), expression=exp.Literal.number(shard.file_index)))
            .limit(shard.rows).offset(shard.offset))
    table.replace(exp.Subquery(this=rows, alias=table.args.get("alias")))
    return select.sql("duckdb")


def _virtual_columns_read(sql: str, real: list[str]) -> tuple[str, ...]:
    """DuckDB's virtual file columns the query names, unless the input has a real one so named."""
    names = {c.name.lower() for c in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Column)}
    return tuple(v for v in VIRTUAL_COLUMNS if v in names and v not in {r.lower() for r in real})


def _expand(con: duckdb.DuckDBPyConnection, paths: tuple[str, ...]) -> tuple[str, ...]:
    """Globs expanded as the readers expand them (glob() lists files in the same order)."""
    files: list[str] = []
    for path in map(_absolute, paths):
        if any(c in path for c in "*?["):
            matched = [r[0] for r in con.execute("SELECT file FROM glob(?)", [path]).fetchall()]
            if not matched:
                raise ArgumentError(f"no file matches {path!r}; check the path (workers read the same path)")
            files += matched
        else:
            files.append(path)
    return tuple(files)


def plan(sql: str, output: str | Path = "DIR", model: str | None = None,
         rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> Plan:
    """Check the query, list its files and their rows, and cut them into shards of rows_per_shard."""
    if rows_per_shard < 1:
        raise ArgumentError(f"rows_per_shard must be at least 1, not {rows_per_shard}")
    query = parse(sql, str(output))
    from duckllm.sql import register
    con = register(duckdb.connect(), model=model)   # binds the llm_* macros; loads no model
    files = _expand(con, query.paths)
    reader = _reader(_with_files(query.sql, files)).sql("duckdb")
    try:
        columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
        if "file_index" in columns:
            raise ArgumentError("the input has a column named file_index, which hides the DuckDB virtual column "
                                "duckllm run splits files with; rename it (SELECT * RENAME ...) into a new file first")
        exposed = _virtual_columns_read(query.sql, columns)
        counts = dict(con.execute(f"SELECT file_index, count(*) FROM {reader} GROUP BY ALL").fetchall())
        con.execute(f"DESCRIBE {_with_files(query.sql, files).sql('duckdb')}")   # a typo fails here, not on workers
    except duckdb.Error as e:
        raise ArgumentError(f"the query does not run on its input: {e}") from None
    file_rows = tuple(counts.get(i, 0) for i in range(len(files)))
    shards = []
    for i, n in enumerate(file_rows):
        for offset in range(0, n, rows_per_shard):
            shards.append(Shard(len(shards), i, offset, min(rows_per_shard, n - offset)))
    if not shards:   # no input rows: one empty part still carries the output's columns
        shards.append(Shard(0, 0, 0, 0))
    return Plan(query, model, files, file_rows, rows_per_shard, tuple(shards), exposed)


# --- the output folder ---------------------------------------------------------------------------

def _prepare_output(output: Path, plan_: Plan) -> list[Shard]:
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


# --- workers -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _file_lock(path: Path):
    """One fetch of a model per node when several workers start there at once."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Worker:
    """One DuckDB connection with duckllm, its model loaded once, for the worker's lifetime."""

    def __init__(self, model: str | None, cache: str | bool | None, threads: int | None,
                 engine_factory: Callable[[], object] | None):
        from duckllm.engine import Engine
        from duckllm.settings import Settings
        from duckllm.sql import register
        if engine_factory is not None:
            engine = engine_factory()
        else:
            # the worker's process is an edge: its node's DUCKLLM_* and the run's own choices
            settings = Settings.from_env(model=model, threads=threads).with_cache(cache)
            engine = Engine(settings)
            with _file_lock(engine.store.models_dir / ".fetch.lock"):
                engine.model(model)     # one fetch per node
        self.con = register(duckdb.connect(), model=model, cache=cache, engine=engine)
        self.con.execute("SET enable_progress_bar = false")
        self.device = engine.runtime(model).describe().get("device", "?")   # load now, once
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        self._warn_if_gpu_unused()

    def _warn_if_gpu_unused(self):
        try:
            import ray
            gpus = ray.get_gpu_ids() if ray.is_initialized() else []
        except ImportError:
            gpus = []
        if gpus and self.device != "gpu":
            print(f"duckllm: warning: worker {self.where} holds GPU {gpus} but runs on {self.device}: "
                  f"llama-cpp-python was built without CUDA; reinstall it with CMAKE_ARGS=\"-DGGML_CUDA=on\" "
                  f"(README, GPU)", file=sys.stderr)

    def _counters(self) -> dict:
        from duckllm.engine.stats import STATS
        return STATS.snapshot()


class _ShardWorker(_Worker):
    """Computes shards of one plan into the output folder."""

    def __init__(self, sql: str, files: tuple[str, ...], exposed: tuple[str, ...], output: str, model, cache,
                 threads, engine_factory):
        self.sql, self.files, self.exposed, self.output = sql, tuple(files), tuple(exposed), Path(output)
        if not self.output.is_dir():
            raise ShardError(f"the output folder {self.output} is not there on {socket.gethostname()}: every "
                             f"worker writes its parts there, so on several machines give a folder they all "
                             f"mount at the same path (NFS, a mounted bucket)")
        super().__init__(model, cache, threads, engine_factory)

    def run(self, shard: Shard) -> dict:
        final = self.output / shard.part
        summary = {"shard": shard.index, "part": shard.part, "input_rows": shard.rows, "worker": self.where,
                   "device": self.device}
        before, started = self._counters(), time.perf_counter()
        skipped = final.exists()   # another worker (a retried task) finished it first
        temporary = self.output / f".{shard.part}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            if not skipped:
                self.con.execute(f"COPY ({shard_sql(self.sql, self.files, shard, self.exposed)}) TO "
                                 f"{exp.Literal.string(str(temporary)).sql('duckdb')} (FORMAT parquet)")
                os.replace(temporary, final)   # a part is there whole, or not at all
        except Exception as e:
            temporary.unlink(missing_ok=True)
            raise ShardError(f"{shard.part} (rows {shard.offset}-{shard.offset + shard.rows - 1} of "
                             f"{self.files[shard.file_index]}) failed on {self.where}: {e}") from None
        after = self._counters()
        rows = self.con.execute("SELECT count(*) FROM read_parquet(?)", [str(final)]).fetchall()[0][0]
        return summary | {"rows": rows, "model_rows": after["model_rows"] - before["model_rows"],
                          "cache_hits": after["cache_hits"] - before["cache_hits"],
                          "seconds": time.perf_counter() - started, "skipped": skipped}

    def __call__(self, batch: dict) -> dict:
        """Ray Data: a batch of shard descriptions in, one summary per shard out."""
        results = [self.run(Shard(*(int(batch[k][i]) for k in ("index", "file_index", "offset", "rows"))))
                   for i in range(len(batch["index"]))]
        return {k: [r[k] for r in results] for k in results[0]}


@dataclass
class Placement:
    """How many workers, what each asks of Ray, and how many llama.cpp threads each runs."""
    workers: int
    ray_args: dict = field(default_factory=dict)
    threads: int | None = None


def placement(workers: int | None = None, gpus_per_worker: float | None = None,
              cpus_per_worker: int | None = None) -> Placement:
    """One worker per GPU when the cluster has GPUs (each asks Ray for 1 CPU beside its GPUs);
    else one per node, running llama.cpp on that node's CPUs (split between workers when more than
    one lands on a node). cpus_per_worker, when given, is both what a worker asks of Ray and its
    llama.cpp threads."""
    import ray
    total_gpus = ray.cluster_resources().get("GPU", 0)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if gpus_per_worker is None:
        gpus_per_worker = 1 if total_gpus else 0
    if gpus_per_worker:
        if total_gpus < gpus_per_worker:
            raise ArgumentError(f"the Ray cluster has {total_gpus:g} GPUs, fewer than --gpus-per-worker "
                                f"{gpus_per_worker:g}; lower it, or pass 0 to run on CPUs")
        count = workers or int(total_gpus // gpus_per_worker)
        return Placement(count, {"num_gpus": gpus_per_worker, "num_cpus": cpus_per_worker or 1}, cpus_per_worker)
    if not nodes:
        raise ArgumentError("the Ray cluster has no node with CPUs; start one (ray start --address ...)")
    count = workers or len(nodes)
    per_node = math.ceil(count / len(nodes))
    node_cpus = int(min(n["CPU"] for n in nodes))
    threads = cpus_per_worker or max(1, node_cpus // per_node)
    # The workers of a node ask for all its CPUs but one: Ray then places no more than per_node
    # workers on a node, and Ray Data's readers and writers still get a CPU (with none, a
    # pipeline that reads files waits forever).
    reserve = cpus_per_worker or round(max(0, node_cpus - 1) / per_node, 3)
    return Placement(count, {"num_cpus": reserve}, threads)


def _ray(address: str | None):
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise DuckLLMError("Ray is not installed; pip install 'duckllm[ray]' (ray[data]), "
                           "or leave --ray out to run in this process") from None
    if not ray.is_initialized():
        ray.init(address=None if address in (None, "", "local") else address)
        return ray, True
    return ray, False


@contextlib.contextmanager
def _shard_context():
    """Ray Data settings for duckllm run: every worker up (model loaded) before the first shard,
    so shards spread over all of them; no progress bars, duckllm run reports each part itself."""
    import ray.data
    context = ray.data.DataContext.get_current()
    names = ("enable_progress_bars", "print_on_execution_start", "wait_for_min_actors_s")
    saved = [getattr(context, name) for name in names]
    # a first start may fetch the model on each node: minutes for a large one
    for name, value in zip(names, (False, False, 3600)):
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, saved):
            setattr(context, name, value)


# --- the two entry points -------------------------------------------------------------------------

def _cache_setting(cache: str | Path | bool | None) -> str | bool | None:
    """None: each worker's own cache; False or 'off': none; else the path of one shared file."""
    if isinstance(cache, (str, Path)):
        return False if str(cache).lower() == "off" else _absolute(str(cache))
    return cache


@dataclass
class RunResult:
    output: Path
    shards: int
    computed: int
    skipped: int           # parts already there from an earlier run
    rows: int              # output rows of the parts computed now
    model_rows: int
    cache_hits: int
    seconds: float
    workers: list[str] = field(default_factory=list)

    def read_back(self) -> str:
        return f"SELECT * FROM read_parquet('{self.output}/*.parquet')"


def run_query(sql: str, output: str | Path, *, ray: bool = False, address: str | None = None,
              model: str | None = None, cache: str | Path | bool | None = None, workers: int | None = None,
              gpus_per_worker: float | None = None, cpus_per_worker: int | None = None,
              rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, progress: Callable[[dict], None] | None = None,
              engine_factory: Callable[[], object] | None = None) -> RunResult:
    """Run a row-mapping query shard by shard into output/part-NNNNNN.parquet.

    ray: on a Ray cluster (address: 'auto', 'ray://host:10001', or None for a local one or the one
    already initialised), one worker per GPU or per node; else shard after shard in this process.
    cache: None, each worker's $DUCKLLM_HOME cache; a path, one SQLite file all workers share (on
    one machine: SQLite's WAL needs a local disk); False, no cache.
    progress: called with each finished shard's summary.
    engine_factory: builds each worker's Engine (tests give a fake runtime); default duckllm's.
    """
    started = time.perf_counter()
    output, cache = Path(_absolute(str(output))), _cache_setting(cache)
    plan_ = plan(sql, output, model, rows_per_shard)
    if model and not store.is_path(model):
        catalog.get(model)   # a misspelt name fails here; each worker fetches the file on its own node
    todo = _prepare_output(output, plan_)
    summaries: list[dict] = []

    def finished(summary: dict) -> None:
        summaries.append(summary)
        if progress:
            progress(summary | {"done": len(summaries), "todo": len(todo), "total": len(plan_.shards)})

    if todo and not ray:
        worker = _ShardWorker(plan_.query.sql, plan_.files, plan_.exposed, str(output), model, cache, None,
                              engine_factory)
        for shard in todo:
            finished(worker.run(shard))
    elif todo:
        ray_, started_here = _ray(address)
        where = placement(workers, gpus_per_worker, cpus_per_worker)
        items = [{"index": s.index, "file_index": s.file_index, "offset": s.offset, "rows": s.rows} for s in todo]
        with _shard_context():
            shards = ray_.data.from_items(items, override_num_blocks=len(items))
            done = shards.map_batches(
                _ShardWorker, batch_size=1, batch_format="numpy",
                fn_constructor_args=(plan_.query.sql, plan_.files, plan_.exposed, str(output), model, cache,
                                     where.threads, engine_factory),
                # a shard goes only to an idle worker: the load spreads, and a lost worker takes
                # one shard with it, not a queue
                compute=ray_.data.ActorPoolStrategy(size=min(where.workers, len(items)),
                                                    max_tasks_in_flight_per_actor=1),
                **where.ray_args)
            try:
                for row in done.iter_rows():
                    finished(dict(row))
            except KeyboardInterrupt:
                if started_here:   # a cluster of our own: stop its processes, or some outlive us
                    ray_.shutdown()
                raise
            except Exception as e:
                there = sum((output / s.part).exists() for s in plan_.shards)
                raise ShardError(f"{_root_cause(e)}\n{there} of {len(plan_.shards)} parts are done and kept in "
                                 f"{output}; fix the cause and run the same command again: only the "
                                 f"{len(plan_.shards) - there} unfinished shards will run") from None
    computed = [s for s in summaries if not s.get("skipped")]
    return RunResult(output, len(plan_.shards), len(computed), len(plan_.shards) - len(computed),
                     sum(s["rows"] for s in computed), sum(s["model_rows"] for s in computed),
                     sum(s["cache_hits"] for s in computed), time.perf_counter() - started,
                     sorted({s["worker"] for s in computed}))


def _root_cause(error: BaseException) -> str:
    """Ray wraps a worker's exception in its own; keep duckllm's message where there is one."""
    seen = error
    while seen is not None:
        if isinstance(seen, ShardError):
            return str(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__
    text = str(error)
    marker = "ShardError: "
    return text.rsplit(marker, 1)[1].strip() if marker in text else text.strip().splitlines()[-1]


class _ColumnsWorker(_Worker):
    """Adds duckllm columns to Arrow batches: DuckDB reads the batch in place."""

    def __init__(self, columns: dict[str, str], model, cache, threads, engine_factory):
        super().__init__(model, cache, threads, engine_factory)
        self.sql = _columns_sql(columns)

    def __call__(self, batch):
        self.con.register("__duckllm_batch", batch)
        try:
            return self.con.sql(self.sql).to_arrow_table()
        finally:
            self.con.unregister("__duckllm_batch")


def _columns_sql(columns: dict[str, str]) -> str:
    """SELECT *, <expression> AS <name>, ... over one batch; each expression must be row by row."""
    if not columns:
        raise ArgumentError("give at least one column: with_columns(ds, {'name': \"llm_classify(text, ['a', 'b'])\"})")
    parts = []
    for name, expression in columns.items():
        try:
            parsed = sqlglot.parse_one(f"SELECT {expression}", read="duckdb")
        except sqlglot.errors.ParseError as e:
            raise ArgumentError(f"column {name!r}: cannot read {expression!r} as a SQL expression: {e}") from None
        if not isinstance(parsed, exp.Select) or len(parsed.expressions) != 1 or _from(parsed):
            raise ArgumentError(f"column {name!r}: give one SQL expression over the batch's columns, "
                                f"e.g. \"llm_classify(text, ['a', 'b'])\", not {expression!r}")
        try:
            check_row_mapping(parsed)
        except NotRowMapping as e:
            raise ArgumentError(f"column {name!r}: {e.reason}, and with_columns computes one value per row "
                                f"from that row; aggregate its output afterwards (Ray Data's groupby, or "
                                f"DuckDB over the files it writes)") from None
        parts.append(exp.alias_(parsed.expressions[0], name, quoted=True))
    return exp.select("*", *parts).from_("__duckllm_batch").sql("duckdb")


def with_columns(ds, columns: dict[str, str], *, model: str | None = None, cache: str | Path | bool | None = None,
                 workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_worker: int | None = None, batch_size: int = 2048,
                 engine_factory: Callable[[], object] | None = None):
    """ds (a ray.data.Dataset) with a column added for each {name: SQL expression}, evaluated by
    DuckDB with duckllm on each Arrow batch, e.g.
    with_columns(ds, {"r": "llm_classify(text, ['refund', 'delivery'])"}) adds the STRUCT column r.
    Lazy, like any Ray Data transform; workers and cache as in run_query."""
    _columns_sql(columns)   # a malformed expression fails here, not on every worker
    import ray.data
    where = placement(workers, gpus_per_worker, cpus_per_worker)
    return ds.map_batches(_ColumnsWorker, batch_size=batch_size, batch_format="pyarrow",
                          fn_constructor_args=(dict(columns), model, _cache_setting(cache), where.threads,
                                               engine_factory),
                          compute=ray.data.ActorPoolStrategy(size=where.workers), **where.ray_args)
