"""The README and docs/ show what users will run: CI runs the README's fresh-machine commands, every
SQL statement they show runs as written, the answers they show are the default model's, the
signatures in docs/functions.md are the functions' own, and every link leads somewhere."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
TOLERANCE = 0.02     # a shown confidence is rounded, and may move in its last digits between CPUs

# The tables the examples read, a few rows each; an example naming a new table adds a line here.
TABLES = {
    "tickets": "SELECT * FROM read_csv('examples/tickets.csv')",
    "sms": "SELECT * FROM (VALUES ('WINNER! Claim your prize now'), ('see you at lunch')) t(msg)",
    "reviewed": "SELECT * FROM (VALUES ('refund me', 'refund'), ('where is it', 'delivery')) t(text, label)",
    "reviewed_sms": "SELECT 'message ' || i AS msg, CASE WHEN i % 3 = 0 THEN 'spam' ELSE 'ham' END AS label "
                    "FROM range(60) t(i)",      # enough labeled rows to calibrate on
    "news": "SELECT * FROM (VALUES ('The match ended 2-1'), ('Stocks fell on Monday')) t(text)",
    "contacts": "SELECT '555 123 4567' AS phone",
    "customers": "SELECT '10 Downing Street, London' AS address",
    "products": "SELECT 'Samsung 970 EVO Plus 1TB NVMe SSD' AS title",
    "shop_a": "SELECT 1 AS id, 'Samsung' AS brand, 'Samsung 970 EVO Plus 1TB' AS title",
    "shop_b": "SELECT 2 AS id, 'Samsung' AS brand, 'Samsung EVO Plus NVMe 1 TB' AS title",
}


def test_ci_runs_the_readme_commands():
    readme = README.read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.DOTALL).group(1)
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci


# ---- SQL examples ---------------------------------------------------------------------------

def sql_blocks(page: Path) -> list[str]:
    return [re.sub(r"^ {0,4}", "", block, flags=re.MULTILINE)
            for block in re.findall(r"^ *```sql\n(.*?)^ *```", page.read_text(), re.DOTALL | re.MULTILINE)]


def examples(block: str) -> list[tuple[str, str | None]]:
    """(statement, the answer shown under it or None) for each statement of a SQL block. A shown
    answer is the comment right after a statement that starts with '{' or '[' (its lines joined);
    '...' in it stands for anything, and a note after it in parentheses is not part of it."""
    lines, found, i = block.splitlines(), [], 0
    while i < len(lines):
        statement = []
        while i < len(lines) and not re.sub(r"\s--\s.*$", "", lines[i]).rstrip().endswith(";"):
            statement.append(lines[i])
            i += 1
        if i < len(lines):   # the statement's last line, without its comment and semicolon
            statement.append(re.sub(r"\s--\s.*$", "", lines[i]).rstrip().rstrip(";"))
        i += 1
        shown = []
        if i < len(lines) and re.match(r"\s*-- [{\[]", lines[i]):
            while i < len(lines) and lines[i].lstrip().startswith("--"):
                shown.append(lines[i].strip()[2:].strip())
                i += 1
        answer = re.sub(r"\s{2,}\(.*\)$", "", " ".join(shown)) if shown else None
        found.append(("\n".join(statement).strip(), answer))
    return [(statement, answer) for statement, answer in found if re.sub(r"--.*", "", statement).strip()]


def all_blocks() -> list[tuple[str, list[tuple[str, str | None]]]]:
    return [(f"{page.relative_to(ROOT).as_posix()} block {n}", examples(block))
            for page in PAGES for n, block in enumerate(sql_blocks(page), 1)]


def shown_matches(shown: str, got: str) -> bool:
    pattern, numbers = "", []
    for part in re.split(r"(\d+\.\d+|\.\.\.)", shown):
        if part == "...":
            pattern += ".*?"
        elif re.fullmatch(r"\d+\.\d+", part):
            pattern += r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)"
            numbers.append(float(part))
        else:
            pattern += re.escape(part)
    match = re.fullmatch(pattern, got)
    return bool(match) and all(abs(float(g) - n) <= TOLERANCE for g, n in zip(match.groups(), numbers))


def test_the_pages_show_sql_examples_with_answers():
    found = [example for _, block in all_blocks() for example in block]
    assert len(found) >= 20
    assert sum(answer is not None for _, answer in found) >= 5


@pytest.mark.parametrize(("where", "block"), all_blocks(), ids=[where for where, _ in all_blocks()])
def test_every_sql_example_runs_as_written(fake_con, monkeypatch, where, block):
    """On the fake runtime, a block's statements in order: the functions, arguments, options and
    tables they name exist."""
    from duckllm.store import catalog
    monkeypatch.chdir(ROOT)
    for name, query in TABLES.items():
        fake_con.execute(f"CREATE TABLE {name} AS {query}")
    for statement, _ in block:
        for model in catalog.models():
            statement = statement.replace(f"'{model}'", "'fake'")
        fake_con.execute(statement).fetchall()


@pytest.mark.integration
def test_the_answers_shown_are_the_default_models(monkeypatch, home):
    import duckllm
    from duckllm import ModelError
    from duckllm.store import ModelStore
    try:
        ModelStore(home).resolve(fetch=False)
    except ModelError:
        pytest.skip("the default model is not downloaded (the README's first command fetches it)")
    monkeypatch.chdir(ROOT)
    con = duckllm.connect()
    shown = [(where, statement, answer) for where, block in all_blocks() for statement, answer in block if answer]
    for where, statement, answer in shown:
        rows = con.execute(f"SELECT COLUMNS(*)::VARCHAR FROM ({statement})").fetchall()
        assert len(rows) == 1, f"{where}: an example with an answer shown must give one row: {statement}"
        assert shown_matches(answer, rows[0][-1]), f"{where}: {statement}\n shown: {answer}\n   got: {rows[0][-1]}"


def test_shown_answers_are_matched_by_value_within_rounding():
    assert shown_matches("{'label': a, 'confidence': 0.92}", "{'label': a, 'confidence': 0.9186746486828432}")
    assert not shown_matches("{'label': a, 'confidence': 0.92}", "{'label': a, 'confidence': 0.85}")
    assert not shown_matches("{'label': a, 'confidence': 0.92}", "{'label': b, 'confidence': 0.92}")
    assert shown_matches("[{'text': X, ...}, {'text': Y, ...}]", "[{'text': X, 'c': 0.9}, {'text': Y, 'c': 0.8}]")
    assert examples("SELECT 1;   -- a comment\n-- {'a': 1}   (a note)\nSELECT 2;\n-- not an answer") == \
        [("SELECT 1", "{'a': 1}"), ("SELECT 2", None)]


# ---- signatures and links -------------------------------------------------------------------

def documented_signatures() -> dict[str, list[str]]:
    page = (ROOT / "docs" / "functions.md").read_text()
    block = re.search(r"## Signatures\n.*?```\n(.*?)```", page, re.DOTALL).group(1)
    signatures = {}
    for line in block.splitlines():
        name, params = re.fullmatch(r"(\w+)\((.*)\)", line.strip()).groups()
        params = re.sub(r"\[[^\]]*\]", "[]", params)
        signatures[name] = [p.split(":=")[0].strip() for p in params.split(",") if p.strip()]
    return signatures


def test_the_documented_signatures_are_the_functions_own(fake_con):
    rows = fake_con.execute("SELECT function_name, parameters FROM duckdb_functions() WHERE "
                            "function_type LIKE '%macro' AND (function_name LIKE 'llm\\_%' ESCAPE '\\' "
                            "OR function_name LIKE 'duckllm\\_%' ESCAPE '\\')").fetchall()
    assert documented_signatures() == {name: list(params) for name, params in rows}
    readme = README.read_text()
    assert [name for name, _ in rows if f"`{name}(" not in readme] == []   # the README's tour names each


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^ *```.*?^ *```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_leads_somewhere(page):
    text = re.sub(r"^ *```.*?^ *```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        assert where.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(where), f"{page.name}: {target}: no heading has that anchor"
