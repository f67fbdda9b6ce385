"""`duckllm shell` as a person uses it, through a pseudo-terminal: dot commands, multi-line
statements, history, whatever a person may type (a lone ';', a stray quote, an error), and Ctrl-C
cancelling a running query while the shell and the rows already answered stay."""
import os
import signal
import sys
import time

import pytest
from conftest import SMALL_MODEL
from test_interrupt import cached_rows

from duckllm.cli.session import INTERRUPTED

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.integration
PROMPT, CONTINUE = "D ", "‣ "
UP = "\x1b[A"
LONG = ("SELECT count(llm_classify('ticket ' || i || ': where is my refund', ['refund', 'delivery']).label) "
        "FROM range(400) t(i);")


def spawn(home, confirm_seconds="1e9"):
    env = dict(os.environ, DUCKLLM_HOME=str(home), DUCKLLM_PROGRESS="0", TERM="dumb",
               DUCKLLM_CONFIRM_SECONDS=confirm_seconds)
    shell = pexpect.spawn(sys.executable, ["-m", "duckllm.cli", "shell", "--model", SMALL_MODEL], env=env,
                          encoding="utf-8", timeout=120, dimensions=(50, 250),
                          # Ctrl-C as from a terminal, even where the tests run with SIGINT ignored
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    shell.expect_exact("duckllm shell")
    shell.expect_exact(PROMPT)
    return shell


def run(shell, line, *expected, timeout=-1):
    """Send a line; expect each pattern in turn, then the prompt; return the patterns' matches.
    timeout: seconds to wait for each (-1: the spawn's 120 s)."""
    shell.sendline(line)
    found = []
    for text in expected:
        shell.expect(text, timeout=timeout)
        found.append(shell.match)
    shell.expect_exact(PROMPT)
    return found


def test_dot_commands_multi_line_statements_and_history(home):
    shell = spawn(home)
    run(shell, "CREATE TABLE tickets AS SELECT * FROM (VALUES (1, 'please refund me'), "
               "(2, 'where is my parcel')) v(id, text);")
    run(shell, ".tables", "tickets")
    run(shell, ".schema tickets", r"CREATE TABLE tickets\(id INTEGER, \"text\" VARCHAR\);")
    run(shell, ".mode csv")
    shell.sendline("SELECT id, llm_classify(text, ['refund', 'delivery']).label AS label")
    shell.expect_exact(CONTINUE)
    shell.sendline("")                              # readline keeps no entry for an empty line
    shell.expect_exact(CONTINUE)
    run(shell, "FROM tickets ORDER BY id;", r"id,label\r\n1,(refund|delivery)\r\n2,(refund|delivery)\r\n")
    run(shell, ".timer on")
    run(shell, UP + UP, r"1,(refund|delivery)", r"Run Time: \d+\.\d+ s")   # up twice: the whole SELECT
    run(shell, ".mode nonsense", "current mode: csv; .mode takes one of duckbox, csv")
    shell.sendline(".quit")
    shell.expect(pexpect.EOF)
    history = (home / "shell_history").read_text().splitlines()
    assert ("SELECT id, llm_classify(text, ['refund', 'delivery']).label AS label FROM tickets ORDER BY id;"
            in history)
    assert ".mode csv" in history                   # the entry before the statement stays

    again = spawn(home)                             # history survives the session
    run(again, UP * 2, "current mode: duckbox; .mode takes one of")     # two back: .mode nonsense
    again.sendeof()
    again.expect(pexpect.EOF)


def test_ctrl_c_cancels_the_query_and_keeps_the_shell_and_the_answered_rows(home):
    shell = spawn(home)
    shell.sendline(LONG)
    deadline = time.time() + 120
    while cached_rows(home / "cache.sqlite") < 32 and time.time() < deadline:
        time.sleep(0.2)
    shell.sendintr()
    shell.expect_exact(INTERRUPTED)
    shell.expect_exact(PROMPT)
    kept = cached_rows(home / "cache.sqlite")
    assert 32 <= kept < 400
    run(shell, "SELECT 40 + 2 AS answer;", "42")    # the shell is still alive
    run(shell, ".mode list")
    # the rerun answers every row (on a busy shared machine, hundreds of rows take minutes) ...
    run(shell, LONG, r"\r\n400\r\n", timeout=600)
    [hits] = run(shell, "SELECT cache_hits FROM duckllm_stats();", r"cache_hits\r\n(\d+)\r\n")
    assert int(hits.group(1)) == kept                # ... from the cache where it had finished
    shell.sendeof()
    shell.expect(pexpect.EOF)


def test_a_query_estimated_long_is_asked_about_first(home):
    shell = spawn(home, confirm_seconds="0")
    query = "SELECT llm_classify('please refund me', ['refund', 'delivery']).label AS label;"
    shell.sendline(query)
    shell.expect(r"llm_classify\('please refund me'.*\r\ntotal: 1 inputs to compute, about")
    shell.expect_exact("This query will take a while. Run it? [y/N]: ")
    run(shell, "n", "Not run.")
    run(shell, ".mode list")
    shell.sendline(query)
    shell.expect_exact("Run it? [y/N]: ")
    shell.sendintr()                                # Ctrl-C at the question answers no
    shell.expect_exact("Not run.")
    shell.expect_exact(PROMPT)
    shell.sendline(query)
    shell.expect_exact("Run it? [y/N]: ")
    run(shell, "y", r"label\r\n(refund|delivery)\r\n")
    shell.sendeof()
    shell.expect(pexpect.EOF)


def test_the_shell_outlives_whatever_is_typed(home):
    """Each slip is answered (nothing, an error, or the continuation prompt) and the next
    statement in the same session works."""
    shell = spawn(home)
    run(shell, ".mode list")
    answers = iter(range(100, 200))

    def works():
        n = next(answers)
        run(shell, f"SELECT {n} AS n;", rf"n\r\n{n}\r\n")

    for nothing in (";", ";;", "", "   ", " ; ; ", "-- a comment only;"):
        run(shell, nothing)
        works()
    for slip, said in [
        ("SELECT 'an unterminated quote;", "Error: Parser Error: unterminated"),
        ("SELEC 1;", "Error: Parser Error: syntax error"),
        ("SELECT nope FROM range(1);", "Error: Binder Error: .*nope"),
        ("SELECT 1 / 0 AS x, 'a'::INT;", "Error: Conversion Error"),
        ("SELECT llm_classify('x', NULL);", "Error: llm_classify: labels is NULL"),
        (".timer maybe", "timer: off; .timer takes on or off"),
        (".mode", "current mode: list; .mode takes one of"),
        (".schema no such table", r"sql\r\n"),
        (".", r"Unknown command \.; \.help lists the commands"),
        (".nonsense now", "Unknown command .nonsense"),
    ]:
        run(shell, slip, said)
        works()

    shell.sendline("SELECT 'a quote left open")     # a newline inside a string: keep reading
    shell.expect_exact(CONTINUE)
    run(shell, "and closed' AS t;", r"t\r\na quote left open\r\nand closed\r\n")
    run(shell, "SELECT 7 AS n;;", r"n\r\n7\r\n")

    shell.sendline("SELECT 'typed half")            # Ctrl-C while typing drops the statement
    shell.expect_exact(CONTINUE)
    shell.sendintr()
    shell.expect_exact("^C")
    shell.expect_exact(PROMPT)
    works()

    long_line = "x" * 20_000                        # a huge paste: one long line ...
    run(shell, f"SELECT length('{long_line}') AS n;", r"n\r\n20000\r\n")
    works()
    shell.send("SELECT 0\n" + "+ 1\n" * 300 + "AS total;\n")     # ... and many lines at once
    shell.expect(r"total\r\n300\r\n")
    shell.expect_exact(PROMPT)
    works()

    shell.sendeof()
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 0
