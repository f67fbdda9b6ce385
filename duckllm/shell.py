"""An interactive SQL prompt over a DuckDB connection with duckllm's functions.

Statements may span lines and end with ';'. History is kept in the duckllm home. Dot commands
(.help lists them) act at once. Ctrl-C drops the statement being typed; Ctrl-D or .quit leaves.
"""
from __future__ import annotations

import sys
import time

import duckdb

from .errors import DuckLLMError
from .home import home

PROMPT, CONTINUE = "D ", "‣ "
HELP = """.help             this list
.tables           list tables and views
.schema [TABLE]   CREATE statements
.timer on|off     print each statement's run time
.quit / .exit     leave (Ctrl-D also)"""


class Shell:
    def __init__(self, con: duckdb.DuckDBPyConnection, stdin=None, stdout=None):
        self.con = con
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        self.timer = False
        self.interactive = self.stdin.isatty()
        self._readline = self._setup_history() if self.interactive else None

    def _setup_history(self):
        try:
            import readline
        except ImportError:  # pragma: no cover - not on every platform
            return None
        self._history = home() / "shell_history"
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
        buffer: list[str] = []
        try:
            while True:
                try:
                    line = self._read(CONTINUE if buffer else PROMPT)
                except KeyboardInterrupt:
                    print("^C", file=self.out)
                    buffer = []
                    continue
                if line is None:
                    break
                if not buffer and line.strip().startswith("."):
                    if not self.dot(line.strip()):
                        break
                    continue
                buffer.append(line)
                text = "\n".join(buffer)
                if text.strip().endswith(";"):
                    buffer = []
                    self.execute(text)
                elif not text.strip():
                    buffer = []
        finally:
            if self._readline is not None:
                try:
                    self._readline.write_history_file(self._history)
                except OSError:
                    pass

    def execute(self, sql: str) -> None:
        from .cli import run_statements, user_message
        start = time.perf_counter()
        try:
            run_statements(self.con, sql)
        except KeyboardInterrupt:
            print("Interrupted: the query was cancelled; finished rows are kept in the result cache.",
                  file=self.out)
        except (duckdb.Error, DuckLLMError) as e:
            print(f"Error: {user_message(e)}", file=self.out)
        if self.timer:
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
        elif name == ".timer":
            self.timer = arg.lower() in ("on", "1", "true")
        else:
            print(f"Unknown command {name}; .help lists the commands", file=self.out)
        return True
