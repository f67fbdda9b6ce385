"""Cancelling long work: a process-wide flag the runtime checks between decode steps.

DuckDB runs our UDFs on its own threads while the main thread waits in C++. Two ways in:
- request(con): the CLI and the shell run each query on a worker thread and call it on Ctrl-C:
  DuckDB is interrupted at once, and the engine calls still running stop at their next decode
  step.
- Any other program (a Python script using duckllm.connect()): register() calls watch(con),
  which puts a SIGINT handler over Python's own. Python runs a handler on the main thread only,
  and only when that thread runs Python code or DuckDB polls for signals between its tasks; an
  engine call on a DuckDB worker thread never sees it. So the handler does the cancelling
  itself: it interrupts the watched connections and stops every engine call at its next decode
  step, then lets Python raise KeyboardInterrupt as usual (DuckDB reports it as
  RuntimeError('Query interrupted')). Where the main thread is itself inside an engine call it
  raises nothing there (it could land between a finished row and its cache write): that call
  stops with Cancelled at its next decode step instead, which DuckDB reports as its error.
Either way the finished rows are already cached, so running the query again computes only the rest.
"""
import contextlib
import signal
import threading
import weakref

from duckllm.errors import DuckLLMError

REQUESTED = threading.Event()
_busy = 0
_idle = threading.Condition()
_calls = threading.local()          # .depth: engine calls running on this thread
_watched: list[weakref.ref] = []    # connections to interrupt on Ctrl-C


class Cancelled(DuckLLMError):
    """The query was cancelled (Ctrl-C); finished rows are kept in the result cache."""


def check() -> None:
    if REQUESTED.is_set():
        raise Cancelled("cancelled (Ctrl-C); the rows finished so far are kept in the result cache, "
                        "so running the query again computes only the rest")


@contextlib.contextmanager
def working():
    """Marks an engine call in flight, so a canceller can wait for it to stop."""
    global _busy
    with _idle:
        _busy += 1
    _calls.depth = getattr(_calls, "depth", 0) + 1
    try:
        yield
    finally:
        _calls.depth -= 1
        with _idle:
            _busy -= 1
            if _busy == 0:      # everything cancelled has stopped: later work runs again
                REQUESTED.clear()
            _idle.notify_all()


def request(con=None, timeout: float = 60.0) -> None:
    """Cancel: interrupt DuckDB, then wait until no engine call is running, and re-arm."""
    REQUESTED.set()
    if con is not None:
        con.interrupt()
    with _idle:
        _idle.wait_for(lambda: _busy == 0, timeout=timeout)
    REQUESTED.clear()


def watch(con) -> None:
    """Let Ctrl-C cancel con's running query from any program (see the module's docstring).
    The handler goes in only on the main thread and only over Python's default one, so a
    program's own SIGINT handler is left alone."""
    _watched[:] = [ref for ref in _watched if ref() is not None] + [weakref.ref(con)]
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, _on_sigint)


def _on_sigint(signum, frame):
    with _idle:     # re-entrant: the main thread may hold it where the signal lands
        cancelling = _busy > 0
        if cancelling:
            # DuckDB first, so no new chunk starts an engine call once the running ones stopped
            for ref in list(_watched):
                con = ref()
                try:
                    if con is not None:
                        con.interrupt()
                except Exception:   # a closed connection has nothing to interrupt
                    pass
            REQUESTED.set()     # under the lock: the last call cannot end unseen and leave it set
    if cancelling and getattr(_calls, "depth", 0):
        return
    signal.default_int_handler(signum, frame)
