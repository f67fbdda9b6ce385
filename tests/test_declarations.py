"""Each SQL function is declared once (duckllm/tasks/declare.py): what DuckDB, Arrow, dbt, the
option check and the task's answers show must be exactly that declaration."""
import json
import re

import duckdb
import pytest

import duckllm
from duckllm.engine import Engine
from duckllm.sql import dbt_macros
from duckllm.sql.udfs import arrow_type, udf_type
from duckllm.tasks.declare import answer_type
from duckllm.tasks.functions import DECLARATIONS, TASKS

BY_NAME = {task.DECLARATION.name: task for task in TASKS}
# a value for each positional parameter that is not the row's text, so that a call binds
SAMPLES = {"labels": ["refund", "delivery"], "schema": {"item": "VARCHAR", "days": "INTEGER"}, "question": "Why?"}
TEXT = "please refund my order from Berlin, 2 items"


def sql_call(function, text="'x'", **named) -> str:
    """A call of the function with its positional arguments and the given named ones (SQL text)."""
    positional = [text if p.row else repr(SAMPLES[p.name]) for p in function.params if p.positional]
    return f"{function.name}({', '.join(positional + [f'{k} := {v}' for k, v in named.items()])})"


def json_arguments(function, **options) -> dict:
    """The arguments as the macro packs them for the UDF (the row's text aside): the samples,
    and the named parameters that have a default other than NULL."""
    defaults = {p.name: duckdb.connect().execute(f"SELECT {p.default}").fetchone()[0]
                for p in function.params if not p.positional and p.default != "NULL"}
    return {**{p.name: SAMPLES[p.name] for p in function.params if p.positional and not p.row},
            **defaults, **options}


def top_level(text: str) -> list[str]:
    """text split at its commas outside parentheses, brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, c in enumerate(text):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


@pytest.mark.parametrize("function", DECLARATIONS, ids=lambda f: f.name)
def test_the_macro_takes_the_declared_parameters_in_order_with_their_defaults(fake_con, function):
    with pytest.raises(duckdb.BinderException) as error:       # DuckDB lists the macro's parameters
        fake_con.execute(f"SELECT {function.name}()")
    signature = re.search(rf"\t{function.name}\((.*)\)\n", str(error.value)).group(1)
    params = [part.partition(" := ") for part in top_level(signature)]
    assert [name for name, _, _ in params] == [p.name for p in function.params]
    assert [not named for _, named, _ in params] == [p.positional for p in function.params]
    for (name, _, default), declared in zip(params, function.params):
        if not declared.positional:    # DuckDB rewrites a default: compare what each evaluates to
            shown, wanted = fake_con.execute(f"SELECT {default}, {declared.default}").fetchone()
            assert shown == wanted, name


@pytest.mark.parametrize("function", DECLARATIONS, ids=lambda f: f.name)
def test_the_builder_accepts_exactly_the_declared_options(function):
    build = BY_NAME[function.name].from_sql
    with pytest.raises(Exception, match="unknown option 'colour'; the options are (.*)") as error:
        build(json_arguments(function, options={"colour": "red"}))
    assert str(error.value).rpartition("the options are ")[2].split(", ") == sorted(function.options)
    assert function.options <= {p.name for p in function.params if not p.positional}   # each has a name too


@pytest.mark.parametrize("function", DECLARATIONS, ids=lambda f: f.name)
def test_duckdb_and_arrow_types_are_the_declared_fields(fake_con, function):
    kind = arrow_type(udf_type(function))
    returned = fake_con.execute("SELECT return_type FROM duckdb_functions() WHERE function_name = ?",
                           [function.udf]).fetchone()[0]
    shown = fake_con.execute(f"SELECT typeof({sql_call(function)})").fetchone()[0].replace('"', "")
    if function.returns == "schema":      # JSON text, read by the macro into the schema's STRUCT
        assert str(kind) == "string" and returned == "VARCHAR"
        schema = ", ".join(f"{name} {kind}" for name, kind in SAMPLES["schema"].items())
        expected = answer_type(function).replace("<the schema's fields>", schema).replace(
            "<field> DOUBLE, ...", ", ".join(f"{name} DOUBLE" for name in SAMPLES["schema"]))
        assert shown == expected
        return
    fields = kind.value_type if function.returns == "list" else kind
    declared = function.result[0].type.item.fields if function.returns == "list" else function.result
    assert [f.name for f in fields] == [f.name for f in declared]
    assert shown == returned.replace('"', "") == answer_type(function)


@pytest.mark.parametrize("function", DECLARATIONS, ids=lambda f: f.name)
def test_an_answer_and_the_blank_answer_have_exactly_the_declared_fields(fake_con, function, fake_runtime):
    assert set(function.blank) == {f.name for f in function.result}
    task = BY_NAME[function.name].from_sql(json_arguments(function, model="fake"))
    text = TEXT if len(function.rows) == 1 else json.dumps([TEXT, "refund order"])   # a pair: as the macro sends it
    answer, blank = Engine(load=lambda path, fmt: fake_runtime).run(task, [text, " "])
    schema = list(SAMPLES["schema"]) if function.returns == "schema" else []
    assert list(answer) == schema + [f.name for f in function.result]       # read() writes them, in order
    assert blank == {**dict.fromkeys(schema), **function.blank}
    shown = fake_con.execute(f"SELECT {sql_call(function, text=repr(' '))}").fetchone()[0]
    assert shown == (None if function.returns == "list" else blank)


def test_the_dbt_macro_file_is_the_one_generated_from_the_declarations():
    assert dbt_macros.PATH.read_text() == dbt_macros.render(), \
        "run `python -m duckllm.sql.dbt_macros` after changing a declaration"


def test_each_dbt_macro_takes_the_declared_parameters_model_and_options_last():
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(dbt_macros.PATH.read_text())
    module = template.make_module({"duckllm": None})
    for function in DECLARATIONS:
        macro = getattr(module, function.name.removeprefix("llm_"))
        own = [p.name for p in function.params if p.name not in ("model", "options")]
        assert list(macro.arguments) == own + ["model", "options"]


# Cache keys: the task key of each call as it was before the declarations (commit 263bd69).
# A change here makes every cached answer of that call unreachable: bump the task's VERSION instead.
KEYS = [
    # VERSION 3 (issue 17): the default confidence is sequence, so cached ones are not served as it
    ("llm_classify('x', ['a', 'b'])", '["llm_classify",3,["a","b"],{}]'),
    ("llm_classify('x', ['a', 'b'], descriptions := {'a': 'first'}, confidence := 'choice', model := 'm')",
     '["llm_classify",3,["a","b"],{"confidence":"choice","descriptions":{"a":"first"},"model":"m"}]'),
    ("llm_clean('x')", '["llm_clean",1,null,{}]'),
    ("llm_clean('x', 'dates as ISO 8601')", '["llm_clean",1,"dates as ISO 8601",{}]'),
    ("llm_clean('x', options := {'instructions': 'ISO'}, examples := [{'input': 'a', 'output': 'A'}])",
     '["llm_clean",1,"ISO",{"examples":[{"input":"a","output":"A"}],"instructions":"ISO"}]'),
    ("llm_match('x', 'y')", '["llm_match",4,null,{}]'),
    ("""llm_match('x', 'y', 'Same?', examples := [{'input': '["a","b"]', 'output': 'yes'}])""",
     '["llm_match",4,"Same?",{"examples":[{"input":"[\\"a\\",\\"b\\"]","output":"yes"}]}]'),
    ("llm_extract('x', {'brand': 'VARCHAR', 'n': 'INT'})", '["llm_extract",2,{"brand":"VARCHAR","n":"INTEGER"},{}]'),
    ("llm_extract('x', {'brand': 'VARCHAR'}, 'Be careful.', model := 'm')",
     '["llm_extract",2,{"brand":"VARCHAR"},{"instructions":"Be careful.","model":"m"}]'),
    ("llm_entities('x')", '["llm_entities",2,["PER","ORG","LOC","MISC"],{}]'),
    ("llm_entities('x', ['PER'], max_entities := 3, descriptions := {'PER': 'people'})",
     '["llm_entities",2,["PER"],{"descriptions":{"PER":"people"},"max_entities":3}]'),
    # VERSION 2 (issue 17): an answer keeps every label; the threshold applies on delivery, no part of the key
    ("llm_classify_multi('x', ['a', 'b'], threshold := 0.3, descriptions := ['one', 'two'])",
     '["llm_classify_multi",2,["a","b"],{"descriptions":["one","two"]}]'),
    ("llm_enrich('x', 'Which city?')", '["llm_enrich",1,"Which city?",32,{}]'),
    ("llm_enrich('x', 'Which city?', max_tokens := 8, examples := [{'input': 'a', 'output': 'b'}])",
     '["llm_enrich",1,"Which city?",8,{"examples":[{"input":"a","output":"b"}]}]'),
]


class Recording(Engine):
    """Answers nothing; keeps what each call asked for."""
    def __init__(self):
        super().__init__(load=lambda path, fmt: None)
        self.calls = []

    def run(self, task, texts, use_cache=None, plan=None, query=None):
        self.calls.append((task.key, use_cache, plan))
        return [None] * len(texts)


@pytest.fixture
def recording():
    engine = Recording()
    return engine, duckllm.register(duckdb.connect(), engine=engine)


@pytest.mark.parametrize("call, key", KEYS)
def test_a_call_keys_its_cached_answers_as_before(recording, call, key):
    engine, con = recording
    con.execute(f"SELECT {call}").fetchall()
    assert [k for k, _, _ in engine.calls] == [key]


def test_the_connection_variables_reach_the_engine(recording):
    engine, con = recording
    con.execute("SET VARIABLE duckllm_cache = false")
    con.execute("SET VARIABLE duckllm_plan = 'p1'")
    con.execute("SELECT llm_clean('x')").fetchall()
    assert engine.calls == [('["llm_clean",1,null,{}]', False, "p1")]
