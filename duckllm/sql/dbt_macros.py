"""The dbt package's function macros (sql_macros/dbt/macros/functions.sql), made from the
functions' declarations. The file is checked in, so that the package works without Python;
tests/test_declarations.py fails when it drifts from this text.

    python -m duckllm.sql.dbt_macros      # rewrite the file after changing a declaration
"""
from __future__ import annotations

from duckllm.resources import package_data
from duckllm.tasks.declare import Function, Param, answer_type
from duckllm.tasks.functions import DECLARATIONS

PATH = package_data("sql_macros") / "dbt" / "macros" / "functions.sql"
LAST = ("model", "options")     # every dbt macro ends with these, after the function's own
NAMES = "VARCHAR[]"             # a list of names: a Jinja list, or SQL text (a column, a subquery)
WIDTH = 110

HEADER = '''\
{#- duckllm's SQL functions as dbt macros. Each renders one llm_* call.
    Generated from the functions' declarations (duckllm/tasks/*.py) by
    `python -m duckllm.sql.dbt_macros`: change those, not this file.

    text, a, b: SQL expressions (a column name, usually), as in dbt_utils.
    labels, types: a Jinja list, rendered as a SQL list literal; a string is taken as SQL.
    Everything else (descriptions, instructions, examples, options, model, ...): a Jinja value,
    rendered as a SQL literal (a dict becomes a STRUCT, a list a LIST); none leaves it out.
    schema: a dict of field name to DuckDB type, e.g. {'brand': 'VARCHAR', 'capacity_gb': 'INTEGER'}.

      {{ duckllm.classify('body', ['refund', 'delivery'],
                          descriptions={'refund': 'wants money back'}) }} AS result
-#}

{% macro literal(value) -%}
  {%- if value is none -%}NULL
  {%- elif value is sameas true -%}true
  {%- elif value is sameas false -%}false
  {%- elif value is number -%}{{ value }}
  {%- elif value is string -%}'{{ value | replace("'", "''") }}'
  {%- elif value is mapping -%}
    {%- if value | length == 0 -%}NULL{%- else -%}
    {{ '{' }}{%- for key, item in value.items() -%}
      {{ duckllm.literal(key | string) }}: {{ duckllm.literal(item) }}{{ ', ' if not loop.last }}
    {%- endfor -%}{{ '}' }}
    {%- endif -%}
  {%- elif value is iterable -%}
    [{%- for item in value -%}{{ duckllm.literal(item) }}{{ ', ' if not loop.last }}{%- endfor -%}]
  {%- else -%}
    {{ exceptions.raise_compiler_error("duckllm.literal: cannot write " ~ value ~ " as SQL") }}
  {%- endif -%}
{%- endmacro %}

{#- a list argument: a Jinja list as a literal, a string as SQL -#}
{% macro _list(value) -%}
  {%- if value is string -%}{{ value }}{%- else -%}{{ duckllm.literal(value) }}{%- endif -%}
{%- endmacro %}

{#- the named parameters that are not none: ", name := literal" each -#}
{% macro _named(named) -%}
  {%- for name, value in named.items() if value is not none -%}, {{ name }} := {{ duckllm.literal(value) }}{%- endfor -%}
{%- endmacro %}
'''


def dbt_order(function: Function) -> list[Param]:
    """The dbt macro's arguments: the function's parameters, model and options last."""
    own = [p for p in function.params if p.name not in LAST]
    return own + [p for name in LAST for p in function.params if p.name == name]


def _packed(start: str, items: list[str], end: str, indent: int) -> str:
    """start, the items joined by ', ' and broken between items to stay within WIDTH, end."""
    lines, line = [], start
    for i, item in enumerate(items):
        piece = item + (", " if i < len(items) - 1 else end)
        if len(line.rsplit("\n", 1)[-1]) + len(piece.rstrip()) > WIDTH and line.strip():
            lines.append(line.rstrip())
            line = " " * indent
        line += piece
    return "\n".join(lines + [line])


def _call(function: Function) -> str:
    """The Jinja body that renders the SQL call."""
    parts, named = [], []

    def flush():
        if named:
            parts.append(_packed("{{ duckllm._named({\n      ", [f"'{p.name}': {p.name}" for p in named], "}) }}", 6))
            named.clear()

    for i, p in enumerate(dbt_order(function)):
        separator = "" if i == 0 else ", "
        if p.row:
            parts.append(f"{separator}{{{{ {p.name} }}}}")
        elif p.positional:
            writer = "_list" if p.type == NAMES else "literal"
            parts.append(f"{separator}{{{{ duckllm.{writer}({p.name}) }}}}")
        elif p.type == NAMES:   # a named list: written only when given, so its SQL default holds
            flush()
            parts.append(f"{{% if {p.name} is not none %}}, {p.name} := {{{{ duckllm._list({p.name}) }}}}{{% endif %}}")
        else:
            named.append(p)
    flush()
    return f"  {function.name}(" + "".join(parts) + ")"


def macro(function: Function) -> str:
    name, params = function.name.removeprefix("llm_"), dbt_order(function)
    about = _packed(f"{{#- {function.name} -> {answer_type(function)}\n    ", [f"{p.name} {p.type}" for p in params],
                    " -#}", 4)
    signature = _packed(f"{{% macro {name}(", [p.name if p.positional else f"{p.name}=none" for p in params],
                        ") -%}", len(name) + 10)
    return f"{about}\n{signature}\n{_call(function)}\n{{%- endmacro %}}\n"


def render() -> str:
    return HEADER + "".join("\n" + macro(function) for function in DECLARATIONS)


if __name__ == "__main__":
    PATH.write_text(render())
    print(f"wrote {PATH}")
