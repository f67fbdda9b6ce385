"""An interactive SQL prompt over a DuckDB connection with duckllm's functions.

Statements may span lines and end with ';'. History is kept in the duckllm home. Dot commands
(.help lists them) act at once. Ctrl-C drops the statement being typed; Ctrl-D or .quit leaves.
"""
from __future__ import annotations

import sys
import time

import duckdb

from duckllm.cli.output import MODES
from duckllm.errors import DuckLLMError

PROMPT, CONTINUE = "D ", "‣ "
HELP = """.help             this list
.tables           list tables and views
.schema [TABLE]   CREATE statements
.timer on|off     print each statement's run time
.mode [MODE]      how results print: duckbox (default), csv, json, markdown, line, list
.quit / .exit     leave (Ctrl-D also)"""


class Shell:
    def __init__(self, con: duckdb.DuckDBPyConnection, stdin=None, stdout=None, confirm=None):
        self.con = con
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        self.confirm = confirm          # asks before a long query (cli.ask_when_long)
        self.timer = False
        self.mode = "duckbox"
        self.interactive = self.stdin.isatty()
        self._readline = self._setup_history() if self.interactive else None

    def _setup_history(self):
        try:
            import readline
        except ImportError:  # pragma: no cover - not on every platform
            return None
        from duckllm.sql import engine_of
        self._history = engine_of(self.con).settings.shell_history
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
                    self._remember_as_one(buffer)
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

    def _remember_as_one(self, lines: list[str]) -> None:
        """A statement typed over several lines comes back from history as one line."""
        if self._readline is None or len(lines) < 2:
            return
        end = self._readline.get_current_history_length()
        for position in range(end - 1, end - 1 - len(lines), -1):
            self._readline.remove_history_item(position)
        self._readline.add_history(" ".join(line.strip() for line in lines))

    def execute(self, sql: str) -> None:
        from duckllm.cli.commands import run_statements, user_message
        start = time.perf_counter()
        try:
            run_statements(self.con, sql, confirm=self.confirm, mode=self.mode, out=self.out)
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
        elif name == ".mode":
            if arg in MODES:
                self.mode = arg
            else:
                print(f"current mode: {self.mode}; .mode takes one of {', '.join(MODES)}", file=self.out)
        else:
            print(f"Unknown command {name}; .help lists the commands", file=self.out)
        return True
