"""An interactive SQL prompt over a DuckDB connection with duckllm's functions.

Statements may span lines and end with ';'. History is kept in the duckllm home. Dot commands
(.help lists them) act at once. Ctrl-C drops the statement being typed or cancels the running
one; Ctrl-D or .quit leaves. Whatever is typed, the shell says what went wrong and goes on.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import duckdb

from duckllm.cli import session
from duckllm.cli.output import MODES

PROMPT, CONTINUE = "D ", "‣ "
HELP = """.help             this list
.tables           list tables and views
.schema [TABLE]   CREATE statements
.timer on|off     print each statement's run time
.mode [MODE]      how results print: duckbox (default), csv, json, markdown, line, list
.quit / .exit     leave (Ctrl-D also)"""
ON, OFF = ("on", "1", "true", "yes"), ("off", "0", "false", "no")


class Shell:
    def __init__(self, con: duckdb.DuckDBPyConnection, stdin=None, stdout=None,
                 confirm: session.Confirm | None = None, history: Path | None = None):
        self.con = con
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        self.confirm = confirm          # asks before a long query (session.ask_when_long)
        self.timer = False
        self.mode = "duckbox"
        self.interactive = self.stdin.isatty()
        self._history = history         # kept across sessions, on a terminal only
        self._readline = self._setup_readline() if self.interactive else None
        self._buffer: list[str] = []    # the lines of the statement being typed
        self._typed_from = 0            # the history's length when that statement began

    def _setup_readline(self):
        """Line editing for input(), and the history kept from earlier sessions."""
        try:
            import readline
        except ImportError:  # pragma: no cover - not on every platform
            return None
        if self._history is not None:
            try:
                readline.read_history_file(self._history)
            except OSError:
                pass
        readline.set_history_length(10_000)
        return readline

    def _read(self, prompt: str) -> str | None:
        if self.interactive:
            try:
                return input(prompt)
            except EOFError:
                return None
        line = self.stdin.readline()
        return None if line == "" else line.rstrip("\n")

    def loop(self) -> None:
        if self.interactive:
            print("duckllm shell: SQL with llm_* functions. End statements with ';'. .help for commands.",
                  file=self.out)
        try:
            while True:
                try:
                    if not self._step():
                        break
                except KeyboardInterrupt:   # while typing: drop the statement being typed
                    print("^C", file=self.out)
                    self._buffer = []
        finally:
            if self._readline is not None and self._history is not None:
                try:
                    self._readline.write_history_file(self._history)
                except OSError:
                    pass

    def _step(self) -> bool:
        """Read a line and act on it; False means leave the shell."""
        if not self._buffer and self._readline is not None:
            self._typed_from = self._readline.get_current_history_length()
        line = self._read(CONTINUE if self._buffer else PROMPT)
        if line is None:
            return False
        if not self._buffer and line.strip().startswith("."):
            return self.dot(line.strip())
        self._buffer.append(line)
        text = "\n".join(self._buffer)
        if text.strip().endswith(";"):
            self._remember_as_one()
            self._buffer = []
            self.execute(text)
        elif not text.strip():
            self._buffer = []
        return True

    def _remember_as_one(self) -> None:
        """A statement typed over several lines comes back from history as one line. readline
        adds neither empty lines nor a repeat of the line before, so the statement's entries are
        those added since it began, not one per line."""
        if self._readline is None:
            return
        end = self._readline.get_current_history_length()
        if end - self._typed_from < 2:
            return
        try:
            for position in range(end - 1, self._typed_from - 1, -1):
                self._readline.remove_history_item(position)
        except ValueError:      # a history readline trimmed meanwhile: keep the lines apart
            return
        self._readline.add_history(" ".join(line.strip() for line in self._buffer if line.strip()))

    def execute(self, sql: str) -> None:
        start = time.perf_counter()
        try:
            ran = session.run_statements(self.con, sql, confirm=self.confirm, mode=self.mode, out=self.out)
        except KeyboardInterrupt:
            print(session.INTERRUPTED, file=self.out)
            ran = 1
        except Exception as e:      # the shell outlives any statement; the error says what it was
            print(session.error_line(e), file=self.out)
            ran = 1
        if self.timer and ran:
            print(f"Run Time: {time.perf_counter() - start:.3f} s", file=self.out)
        self.out.flush()

    def dot(self, command: str) -> bool:
        """Run a dot command; False means leave the shell."""
        name, _, arg = command.partition(" ")
        arg = arg.strip()
        if name in (".quit", ".exit", ".q"):
            return False
        if name == ".help":
            print(HELP, file=self.out)
        elif name == ".tables":
            self.execute("SELECT table_name FROM duckdb_tables() UNION ALL "
                         "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1;")
        elif name == ".schema":
            where = " WHERE table_name = '{}'".format(arg.replace("'", "''")) if arg else ""
            self.execute(f"SELECT sql FROM duckdb_tables(){where};")
        elif name == ".timer" and arg.lower() in ON + OFF:
            self.timer = arg.lower() in ON
        elif name == ".timer":
            print(f"timer: {'on' if self.timer else 'off'}; .timer takes on or off", file=self.out)
        elif name == ".mode":
            if arg in MODES:
                self.mode = arg
            else:
                print(f"current mode: {self.mode}; .mode takes one of {', '.join(MODES)}", file=self.out)
        else:
            print(f"Unknown command {name}; .help lists the commands", file=self.out)
        return True
