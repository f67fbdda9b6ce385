"""`duckllm explain`: what a query will ask of the model, before it runs.

sqlglot finds the query's llm_* calls. For each, a probe query keeps the call's own FROM, joins,
CTEs and the WHERE conditions that call no model, and selects the call. Probes run on a cursor of
their own whose duckllm_plan variable names a plan opened on the engine: the macros pass it with
each call, so those calls are counted into the plan instead of answered, while every other query,
on any connection, is answered as ever. So the same macros, arguments and tasks meet the same rows
as in a real run, and rows, distinct inputs and cache hits are counted exactly; tokens are those
the model would be fed (duckllm.engine.prompts) and time comes from this machine's speed
(duckllm.engine.speed). Conditions on other llm_* calls are dropped from a probe, so its counts
are upper bounds there. A cursor does not see its connection's TEMP tables: a query over one
cannot be explained.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import duckdb
import sqlglot
from sqlglot import exp

from duckllm.errors import ArgumentError

DIALECT = "duckdb"
# the names of a SELECT's FROM and WITH in sqlglot's tree: "from" and "with" in older versions
FROM = "from_" if "from_" in exp.Select.arg_types else "from"
WITH = "with_" if "with_" in exp.Select.arg_types else "with"


@dataclass
class CallEstimate:
    call: str                 # the call as written in the query
    function: str
    model: str
    rows: int                 # non-NULL rows the call sees
    distinct: int             # distinct non-blank inputs among them
    cached: int               # of those, already in the result cache
    prompt_tokens: int        # prompt tokens to evaluate: the inputs to compute and the shared prompt
    seconds: float            # estimated time on this machine
    speed_source: str
    by_proxy: int | None = None   # with agreement: of those to compute, the rows a proxy is expected
                                  # to answer (its share in the task's latest call); None without
    chunks_learn_alone: bool = False   # with agreement on several DuckDB threads (duckllm.proxy.cascade)

    @property
    def to_compute(self) -> int:
        return self.distinct - self.cached


def _scalar_llm_functions(con) -> set[str]:
    return {name for (name,) in con.execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() "
        "WHERE function_name LIKE 'llm\\_%' ESCAPE '\\' AND function_type = 'macro'").fetchall()}


def llm_calls(tree: exp.Expression, names: set[str]) -> list[exp.Anonymous]:
    """The outermost calls of duckllm's functions (a call's own arguments run inside it)."""
    calls = [f for f in tree.find_all(exp.Anonymous, bfs=False) if f.name.lower() in names]   # query order
    return [c for c in calls if not any(isinstance(a, exp.Anonymous) and a.name.lower() in names
                                        for a in _ancestors(c))]


def _ancestors(node: exp.Expression):
    node = node.parent
    while node is not None:
        yield node
        node = node.parent


def probe(tree: exp.Expression, call: exp.Anonymous, names: set[str]) -> str:
    """A query that evaluates the call over the rows it would see in the whole query."""
    select = call.find_ancestor(exp.Select)
    query = exp.select(exp.func("count", call.copy()))
    if select is not None:
        for arg in (FROM, "joins"):
            if select.args.get(arg):
                query.set(arg, select.args[arg].copy())
        where = select.args.get("where")
        if where is not None:
            kept = [c for c in _conjuncts(where.this) if not llm_calls(c, names)]
            if kept:
                query = query.where(exp.and_(*[c.copy() for c in kept]))
        if select.args.get("limit") and not select.args.get("order"):
            query.set("limit", select.args["limit"].copy())
    for scope in _ancestors(call):        # the nearest CTEs the call can see
        ctes = scope.args.get(WITH)
        if ctes is not None:
            query.set(WITH, ctes.copy())
            break
    return query.sql(DIALECT, normalize_functions=False)


def _conjuncts(condition: exp.Expression) -> list[exp.Expression]:
    if isinstance(condition, exp.And):
        return _conjuncts(condition.left) + _conjuncts(condition.right)
    if isinstance(condition, exp.Paren):
        return _conjuncts(condition.this)
    return [condition]


def explain(con: duckdb.DuckDBPyConnection, query: str, engine=None) -> list[CallEstimate]:
    """One estimate per llm_* call of the query (the calls of every statement in it)."""
    from duckllm.sql import engine_of
    engine = engine or engine_of(con)
    names = _scalar_llm_functions(con)
    try:
        trees = [t for t in sqlglot.parse(query, read=DIALECT) if t is not None]
    except sqlglot.errors.ParseError as e:
        raise ArgumentError(f"explain: cannot read the query ({str(e).splitlines()[0]}); "
                            f"check its syntax, or run it directly") from e
    calls = [(tree, call) for tree in trees for call in llm_calls(tree, names)]
    if not calls:
        return []
    estimates = []
    (several_threads,), = con.execute("SELECT current_setting('threads') > 1").fetchall()
    with _probing_cursor(con, engine) as cursor:
        for tree, call in calls:
            with engine.planning() as (plan_id, plans):
                cursor.execute("SET VARIABLE duckllm_plan = ?", [plan_id])
                cursor.execute(probe(tree, call, names)).fetchall()
            estimates.append(_summary(call.sql(DIALECT, normalize_functions=False), call.name.lower(),
                                      plans.values(), several_threads))
    return estimates


@contextlib.contextmanager
def _probing_cursor(con: duckdb.DuckDBPyConnection, engine):
    """A cursor of con for the probes: a connection of its own, so the plan's variable is never
    con's. It gets duckllm's macros and a copy of con's variables (duckllm_model, duckllm_cache
    and the user's own)."""
    from duckllm.sql import register
    cursor = register(con.cursor(), engine=engine)
    try:
        for (name,) in con.execute("SELECT name FROM duckdb_variables()").fetchall():
            (value,), = con.execute("SELECT getvariable(?)", [name]).fetchall()   # see sql.engine_of
            try:
                cursor.execute(f"SET VARIABLE {_identifier(name)} = ?", [value])
            except duckdb.Error:     # a value Python cannot hand back as it was: the probes go without it
                pass
        yield cursor
    finally:
        cursor.close()


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _summary(call: str, function: str, plans, several_threads: bool) -> CallEstimate:
    plans = list(plans)      # a macro may call several tasks (a cascade: two models)
    agreement = any(p.agreement for p in plans)
    return CallEstimate(
        call=call, function=function,
        model=", ".join(dict.fromkeys(p.model for p in plans)) or "-",
        rows=max((p.rows for p in plans), default=0),
        distinct=sum(len(p.distinct) for p in plans),
        cached=sum(len(p.cached) for p in plans),
        prompt_tokens=sum(p.tokens for p in plans),
        seconds=sum(p.seconds for p in plans),
        speed_source="; ".join(dict.fromkeys(f"{p.model}: {p.tokens_per_s:.0f} tok/s, {p.speed_source}"
                                             for p in plans if p.tokens_per_s)),
        by_proxy=sum(p.by_proxy for p in plans) if agreement else None,
        chunks_learn_alone=several_threads and agreement,
    )


def total_seconds(estimates: list[CallEstimate]) -> float:
    return sum(e.seconds for e in estimates)


def render(estimates: list[CallEstimate]) -> str:
    """A table of the estimates, and where their speeds come from."""
    if not estimates:
        return "no llm_* calls in this query: it asks nothing of a model"
    head = ("call", "rows", "distinct", "cached", "to compute", "prompt tokens", "est. time")
    rows = [(_short(e.call), f"{e.rows:,}", f"{e.distinct:,}", f"{e.cached:,}", f"{e.to_compute:,}",
             f"{e.prompt_tokens:,}", _duration(e.seconds)) for e in estimates]
    if any(e.by_proxy is not None for e in estimates):     # agreement: the expected split
        head = head[:5] + ("by proxy (est.)",) + head[5:]
        rows = [r[:5] + ("-" if e.by_proxy is None else f"{e.by_proxy:,}",) + r[5:] for r, e in zip(rows, estimates)]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [line(head), line(tuple("-" * w for w in widths)), *map(line, rows)]
    out.append(f"total: {sum(e.to_compute for e in estimates):,} inputs to compute, about "
               f"{_duration(total_seconds(estimates))}")
    out += [f"speed: {s}" for s in dict.fromkeys(e.speed_source for e in estimates if e.speed_source)]
    if any(e.by_proxy is not None for e in estimates):
        out.append("by proxy: the share a proxy answered in the task's latest call with agreement (0 before "
                   "any); the model answers the rest, and each call's sample")
    if any(e.chunks_learn_alone for e in estimates):
        out.append("on several DuckDB threads each chunk's proxy learns only from the answers stored before the "
                   "query: SET threads = 1 lets it learn from the chunks before it too, at no cost to the model "
                   "(docs/proxy.md)")
    return "\n".join(out)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
