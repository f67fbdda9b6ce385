"""The command line's edge without a model: settings checked before anything runs, statements
that hold nothing, and a shell (fed from a pipe) that outlives whatever it is given. The shell at
a terminal is tests/test_shell_pty.py; commands that run a model are in test_integration.py."""
import ast
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from duckllm.cli import session
from duckllm.cli.commands import main
from duckllm.errors import ArgumentError

CLI = Path(__file__).parent.parent / "duckllm" / "cli"


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DUCKLLM_HOME", str(tmp_path / "home"))


@pytest.mark.parametrize("name, value, said", [
    ("DUCKLLM_CONTEXT", "4k", "Error: DUCKLLM_CONTEXT='4k' is not a whole number from 1; set it like"),
    ("DUCKLLM_CACHE", "maybe", "Error: DUCKLLM_CACHE='maybe' is neither on nor off"),
    ("DUCKLLM_CONFIRM_SECONDS", "soon", "Error: DUCKLLM_CONFIRM_SECONDS='soon' is not a number of seconds"),
])
@pytest.mark.parametrize("command", [["sql", "SELECT 1"], ["shell"], ["explain", "SELECT 1"], ["models", "list"]])
def test_a_bad_setting_is_one_line_and_exit_code_1(monkeypatch, command, name, value, said):
    monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, command, input="SELECT 1;\n")
    assert result.exit_code == 1
    assert result.output.strip().startswith(said) and len(result.output.strip().splitlines()) == 1
    assert not isinstance(result.exception, ArgumentError)    # said, not raised as a traceback


def test_a_home_that_is_a_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DUCKLLM_HOME", str(tmp_path / "file"))
    for command in (["sql", "SELECT 1"], ["models", "list"], ["models", "path"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1
        assert result.output.strip() == (f"Error: DUCKLLM_HOME points at '{tmp_path / 'file'}', which is a file, "
                                         "not a folder; set DUCKLLM_HOME to a folder (it is created if missing)")


@pytest.mark.parametrize("text", [";", ";;", " ", "/* a comment only */"])
def test_sql_with_no_statement_is_a_usage_error(text):
    result = CliRunner().invoke(main, ["sql", text])
    assert result.exit_code == 2 and "Error: no SQL statement given" in result.output


def test_sql_errors_are_one_line_and_later_statements_do_not_run():
    result = CliRunner().invoke(main, ["sql", "--mode", "list", "SELECT 1 AS a; SELECT nope; SELECT 2 AS b"])
    assert result.exit_code == 1
    assert result.output.splitlines()[:2] == ["a", "1"] and "b" not in result.output.splitlines()
    assert result.output.splitlines()[-1].startswith("Error: Binder Error:")


def test_the_shell_outlives_whatever_is_piped_in():
    lines = [";", ";;", "", "SELECT 'open;", "SELEC 1;", "SELECT nope;", ".timer maybe", ".mode", ".",
             ".schema no such table", "SELECT 'two", "lines' AS t;", "SELECT 42 AS answer;"]
    result = CliRunner().invoke(main, ["shell"], input="\n".join(lines) + "\n.mode list\nSELECT 43 AS n;\n")
    assert result.exit_code == 0, result.output
    said = result.output
    for expected in ("Error: Parser Error: unterminated", "Error: Parser Error: syntax error",
                     "Error: Binder Error", "timer: off; .timer takes on or off",
                     "current mode: duckbox; .mode takes one of", "Unknown command .;", r"two\nlines", "42"):
        assert expected in said
    assert said.endswith("n\n43\n")


def test_run_statements_counts_the_statements(capsys):
    con = duckdb.connect()
    assert session.run_statements(con, " ; ;; -- nothing", mode="list") == 0
    assert session.run_statements(con, "CREATE TABLE t AS SELECT 1 AS a; SELECT a FROM t;", mode="list") == 2
    assert capsys.readouterr().out == "a\n1\n"


def test_error_lines_keep_duckllms_words_and_name_anything_else():
    wrapped = duckdb.InvalidInputException("Invalid Input Error: Python exception occurred: "
                                           "ArgumentError: llm_classify: labels is NULL")
    assert session.error_line(wrapped) == "Error: llm_classify: labels is NULL"
    assert session.error_line(ArgumentError("use a list")) == "Error: use a list"
    assert session.error_line(UnicodeEncodeError("ascii", "é", 0, 1, "no")).startswith("Error: UnicodeEncodeError: ")


def test_the_session_and_the_shell_import_neither_click_nor_the_commands():
    for module in ("session.py", "shell.py", "output.py"):
        tree = ast.parse((CLI / module).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     for alias in node.names}
        assert not {"click", "duckllm.cli.commands"} & imported, module
