"""Each SQL function declared once: its parameters, options, result fields and blank answer.

Every task module holds one `Function` beside its builder. The SQL layer makes the DuckDB macro,
the UDF's result type and the dbt macro from it (duckllm/sql/); the builder takes its options
from it. So adding an option is one `Param` in the declaration, and its use in the builder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Param:
    """One parameter of a SQL function."""
    name: str
    type: str                   # its DuckDB type, as the reference shows it
    positional: bool = False    # required and given in order; else named, with a default
    default: str = "NULL"       # a named parameter's default, as SQL
    option: bool = True         # a named one may also come inside the options STRUCT
    row: bool = False           # the row's text (or one record of a pair): a column, not a value


@dataclass(frozen=True)
class Field:
    """One field of a function's answer."""
    name: str
    type: Type


@dataclass(frozen=True)
class Struct:
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class ListOf:
    item: Type


@dataclass(frozen=True)
class PerField:
    """A STRUCT with one value of this type per field of the caller's schema (llm_extract)."""
    item: str


Type = str | Struct | ListOf | PerField     # str: a DuckDB scalar type such as 'VARCHAR'


@dataclass(frozen=True)
class Function:
    """A SQL function: what it takes, what it answers, and its answer to a blank text."""
    name: str                       # e.g. 'llm_classify'
    params: tuple[Param, ...]       # in SQL order: the positional ones first
    result: tuple[Field, ...]       # an answer's fields, as the task's read() writes them
    blank: dict                     # the answer to an empty or whitespace-only text
    returns: Literal["struct", "list", "schema"] = "struct"
    # struct: the fields as a STRUCT; list: the one field, a list of what was found;
    # schema: a STRUCT of the fields the `schema` argument names, then these

    def __post_init__(self):
        names, order = [p.name for p in self.params], [p.positional for p in self.params]
        problems = [
            len(set(names)) != len(names) and "a parameter appears twice",
            order != sorted(order, reverse=True) and "a positional parameter follows a named one",
            not 1 <= len(self.rows) <= 2 and "it takes one text, or a pair of records",
            set(self.blank) != {f.name for f in self.result} and "its blank answer is not its result's fields",
            self.returns == "list" and not (len(self.result) == 1 and isinstance(self.result[0].type, ListOf))
            and "a list answer is one field of a LIST type",
            self.returns == "schema" and "schema" not in names and "a schema answer needs a schema parameter",
        ]
        for problem in problems:
            if problem:
                raise ValueError(f"{self.name}: {problem}")

    @property
    def udf(self) -> str:
        """The Python UDF behind the macro."""
        return "__duckllm_" + self.name.removeprefix("llm_")

    @property
    def rows(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.row)

    @property
    def options(self) -> frozenset[str]:
        """What the options STRUCT may hold: every named parameter that is an option."""
        return frozenset(p.name for p in self.params if not p.positional and p.option)


def sql_type(kind: Type) -> str:
    """A declared type as DuckDB writes it."""
    if isinstance(kind, Struct):
        return "STRUCT(" + ", ".join(f"{f.name} {sql_type(f.type)}" for f in kind.fields) + ")"
    if isinstance(kind, ListOf):
        return sql_type(kind.item) + "[]"
    if isinstance(kind, PerField):
        return f"STRUCT(<field> {kind.item}, ...)"
    return kind


def answer_type(function: Function) -> str:
    """The SQL function's answer, as DuckDB writes its type."""
    if function.returns == "list":
        return sql_type(function.result[0].type)
    fields = [f"{f.name} {sql_type(f.type)}" for f in function.result]
    return "STRUCT(" + ", ".join((["<the schema's fields>"] if function.returns == "schema" else []) + fields) + ")"


# The parameters and fields most functions share.
TEXT = Param("text", "VARCHAR", positional=True, row=True)
OPTIONS = Param("options", "STRUCT", option=False)        # any option, as {'instructions': '...'}
MODEL = Param("model", "VARCHAR")                         # a catalog name or a .gguf path
INSTRUCTIONS = Param("instructions", "VARCHAR")
EXAMPLES = Param("examples", "STRUCT(input VARCHAR, output VARCHAR)[]")
DESCRIPTIONS = Param("descriptions", "STRUCT")            # {label: text}, a MAP, or a list beside the labels
# a proxy may answer the rows it agrees with the model on (duckllm/proxy): the least agreement
# among them, and the confidence that it holds
AGREEMENT = (Param("agreement", "DOUBLE"), Param("agreement_confidence", "DOUBLE"))
CONFIDENCE = Field("confidence", "DOUBLE")
NOTE = Field("note", "VARCHAR")
# 'model', 'proxy' or 'cache' in a call with agreement, else NULL
ANSWERED_BY = Field("answered_by", "VARCHAR")
EMPTY_TEXT = "empty text"
