"""A SQL session over a duckllm connection: run statements, print their results in a mode, ask
before a long one, cancel on Ctrl-C, and say errors in duckllm's words.

`duckllm sql` (commands.py) and the shell (shell.py) are its two front ends; it knows nothing of
click, so a front end brings its own way to ask a question (ask_when_long's `ask`).
"""
from __future__ import annotations

import functools
import sys
import threading
from typing import Callable

import duckdb
import sqlglot

from duckllm.cli import output
from duckllm.engine import cancel
from duckllm.errors import DuckLLMError
from duckllm.sql import explain

# errors a user can act on: said as one line, never as a traceback
USER_ERRORS = (DuckLLMError, duckdb.Error)
INTERRUPTED = ("Interrupted: the query was cancelled; rows finished so far are kept in the result cache, "
               "so running it again computes only the rest.")
LONG_QUERY = "This query will take a while. Run it?"
NOT_RUN = "Not run."

Confirm = Callable[[str], bool]      # may veto a statement before it runs


def run_statements(con, sql: str, confirm: Confirm | None = None, mode: str = "duckbox", out=None) -> int:
    """Run every statement of sql and print the result of each that returns rows (output.MODES);
    return how many statements sql held (0 for nothing but ';', blanks or comments). confirm may
    veto a statement before it runs (ask_when_long). Ctrl-C cancels the running statement
    (KeyboardInterrupt); its finished rows stay cached."""
    statements = con.extract_statements(sql)
    for statement in statements:
        if confirm is not None and not confirm(statement.query):
            print(NOT_RUN, file=sys.stderr)
            continue
        interruptible(con, functools.partial(_run, con, statement, mode, out))
    return len(statements)


def _run(con, statement, mode: str, out) -> None:
    if statement.expected_result_type == [duckdb.ExpectedResultType.QUERY_RESULT]:
        output.show(con.sql(statement.query), mode, out)
    else:  # DDL, INSERT, SET: like the duckdb shell, print nothing
        con.execute(statement.query)


def ask_when_long(con, threshold: float, ask: Callable[[str], bool]) -> Confirm:
    """A confirm hook for run_statements: when a statement's llm_* calls are estimated to take
    threshold seconds or more (Settings.confirm_seconds), show the estimate and ask(LONG_QUERY)
    whether to run it."""
    def confirm(query: str) -> bool:
        if "llm_" not in query.lower():
            return True
        try:
            estimates = explain.explain(con, query)
        except (*USER_ERRORS, sqlglot.errors.SqlglotError):
            return True    # not estimable before it runs (say, a table an earlier statement makes)
        if explain.total_seconds(estimates) < threshold:
            return True
        print(explain.render(estimates), file=sys.stderr)
        return ask(LONG_QUERY)
    return confirm


def interruptible(con, work: Callable[[], object]) -> None:
    """Run work on a worker thread so the main thread can take Ctrl-C and cancel it: DuckDB is
    interrupted and the engine calls stop at their next decode step before KeyboardInterrupt
    goes on up."""
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


def error_line(error: Exception) -> str:
    """What a front end prints for an error: USER_ERRORS in their own words; anything else
    (a bug) with its type, so it can be reported."""
    if isinstance(error, USER_ERRORS):
        return f"Error: {user_message(error)}"
    return f"Error: {type(error).__name__}: {error}"
