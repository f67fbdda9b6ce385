"""`duckllm shell` as a person uses it, through a pseudo-terminal: dot commands, multi-line
statements, history, and Ctrl-C cancelling a running query while the shell and the rows already
answered stay."""
import os
import signal
import sys
import time

import pytest
from conftest import SMALL_MODEL
from test_interrupt import cached_rows

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


def run(shell, line, *expected):
    """Send a line; expect each pattern in turn, then the prompt; return the patterns' matches."""
    shell.sendline(line)
    found = []
    for text in expected:
        shell.expect(text)
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
    run(shell, "FROM tickets ORDER BY id;", r"id,label\r\n1,(refund|delivery)\r\n2,(refund|delivery)\r\n")
    run(shell, ".timer on")
    run(shell, UP + UP, r"1,(refund|delivery)", r"Run Time: \d+\.\d+ s")   # up twice: the whole SELECT
    run(shell, ".mode nonsense", "current mode: csv; .mode takes one of duckbox, csv")
    shell.sendline(".quit")
    shell.expect(pexpect.EOF)
    assert ("SELECT id, llm_classify(text, ['refund', 'delivery']).label AS label FROM tickets ORDER BY id;"
            in (home / "shell_history").read_text().splitlines())

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
    shell.expect_exact("Interrupted: the query was cancelled; finished rows are kept in the result cache.")
    shell.expect_exact(PROMPT)
    kept = cached_rows(home / "cache.sqlite")
    assert 32 <= kept < 400
    run(shell, "SELECT 40 + 2 AS answer;", "42")    # the shell is still alive
    run(shell, ".mode list")
    run(shell, LONG, r"\r\n400\r\n")                 # the rerun answers every row ...
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
    run(shell, "y", r"label\r\n(refund|delivery)\r\n")
    shell.sendeof()
    shell.expect(pexpect.EOF)
