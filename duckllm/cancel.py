"""Cancelling long work: a process-wide flag the runtime checks between decode steps.

DuckDB runs our UDFs on its own threads while the main thread waits in C++, where Python's
Ctrl-C handler cannot run; callers that want Ctrl-C (the CLI, the shell) run queries in a worker
thread, and on Ctrl-C call request(): DuckDB is interrupted at once, and the engine calls still
running stop at their next decode step. Finished rows are already cached.
"""
import contextlib
import threading

from .errors import DuckLLMError

REQUESTED = threading.Event()
_busy = 0
_idle = threading.Condition()


class Cancelled(DuckLLMError):
    """The query was cancelled (Ctrl-C); finished rows are kept in the result cache."""


def check() -> None:
    if REQUESTED.is_set():
        raise Cancelled("cancelled; the rows finished so far are kept in the result cache, "
                        "so running the query again computes only the rest")


@contextlib.contextmanager
def working():
    """Marks an engine call in flight, so a canceller can wait for it to stop."""
    global _busy
    with _idle:
        _busy += 1
    try:
        yield
    finally:
        with _idle:
            _busy -= 1
            _idle.notify_all()


def request(con=None, timeout: float = 60.0) -> None:
    """Cancel: interrupt DuckDB, then wait until no engine call is running, and re-arm."""
    REQUESTED.set()
    if con is not None:
        con.interrupt()
    with _idle:
        _idle.wait_for(lambda: _busy == 0, timeout=timeout)
    REQUESTED.clear()
