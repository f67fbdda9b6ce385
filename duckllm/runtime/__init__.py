"""The model runtime seam: rows in, answers out. Knows nothing of DuckDB.

Every function's answer is a small program, a generator run once per row, that yields steps
and gets their results back:
  Say(text)     - text the answer must contain here (a field name, say); fed, not decoded
  Pick(options) - one of a fixed set of options (constrained decoding over the options' tokens)
  Write(...)    - free text of a kind (text, integer, number, a span of the row) up to a stop
and finally returns the answer. The runtime runs the programs of many rows at once, so every
function gets batching, prefix reuse and constrained decoding from one place; results carry
per-token log-probabilities so callers can compute confidences.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Protocol, Sequence, Union

from duckllm.prompt_format import Format, Prompt, Text

KINDS = ("text", "integer", "number", "span")


@dataclass(frozen=True)
class Say:
    text: str


@dataclass(frozen=True)
class Pick:
    options: tuple[str, ...]
    stop: str | None = None      # written after the option; None: the option ends the answer
    or_end: bool = False         # the answer may end here instead: Choice.index == len(options)
    score_rest: bool = True      # score every token of the option, not just those decoded
    prior: tuple[float, ...] | None = None   # each option's log P on content-free inputs, divided
                                 # out where options diverge (contextual calibration)


@dataclass(frozen=True)
class Write:
    max_tokens: int
    kind: str = "text"           # text | integer | number | span (a piece of `source`)
    stop: str | None = None      # a line ends the value ('\n'); None: the value ends the answer
    source: str | None = None    # span: the text the value must be copied from
    or_end: bool = False         # with a stop, the answer may also end here: Generation.ended


Step = Union[Say, Pick, Write]
Program = Generator[Step, Any, Any]


@dataclass
class Choice:
    index: int                     # which option was chosen (len(options): the answer ended)
    token_logprobs: list[float]    # log P(token) over the whole vocabulary, per token of the option
    choice_logprob: float          # log P(option) when decoding may only produce the options
    # per decision among the options' tokens (each trie node walked), every allowed token's
    # log P over the whole vocabulary: the chosen one is the likeliest (duckllm.confidence)
    branches: list[dict[int, float]] = field(default_factory=list)


@dataclass
class Generation:
    text: str
    token_logprobs: list[float]    # per token of text (stops and the end token are not part of it)
    hit_limit: bool = False        # stopped at max tokens, not at its stop
    ended: bool = False            # the answer ended with this value


class Parts(str):
    """A row's text in parts (the records of a pair): too long for the context, each part keeps
    its start and the longest lose the most, instead of the last parts going first."""
    parts: tuple[str, ...]

    def __new__(cls, *parts: str):
        text = super().__new__(cls, "".join(parts))
        text.parts = parts
        return text


@dataclass
class Answer:
    value: Any                     # what the row's program returned
    truncated: bool = False        # the row's text was cut to fit the context


@dataclass
class Usage:
    prompt_tokens: int = 0      # row prompts evaluated (the shared prefix is not counted)
    generated_tokens: int = 0   # answer tokens fed back: decoded, said, or fed only to be scored


def answer_bound(text: str) -> int:
    """Tokens an answer step can take at most: a token covers at least one byte."""
    return len(text.encode("utf-8")) + 2


class Runtime(Protocol):
    format: Format
    usage: Usage

    def run(self, prompt: Prompt, texts: Sequence[str], program: Callable[[int, int], Program],
            answer_tokens: Callable[[int], int], on_done: Callable[[int, Answer], None] | None = None,
            row_prefixes: Sequence[Text] | None = None) -> list[Answer]:
        """Answer each text: program(i, n_text_tokens) is row i's answer program;
        answer_tokens(n_text_tokens) bounds its length (the KV cells reserved for it).
        row_prefixes[i], when given, is prompt text (chat turns of its own) between the shared
        prefix and row i's text. Only markup is read as control tokens, never a row's text."""
        ...

    def describe(self) -> dict: ...

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        """The text's tokens; special: control tokens written in it are read as such."""
        ...

    def tokenize_prompt(self, text: Text, *, add_bos: bool = False) -> list[int]:
        """A prompt's tokens: control tokens only from its markup, never from its content."""
        ...

    def prompt_speed(self, n_tokens: int = 256, after_prefix: bool = False) -> float:
        """Prompt-eval tokens per second on this machine (after the shared prefix held now)."""
        ...

    def prefix_ready(self, prompt: Prompt) -> bool:
        """Whether a call with this prompt would find its shared part held, or kept on disk
        (runtime.prefix_store): loaded, not evaluated."""
        ...


def single(step: Step) -> Program:
    """The program of one step, answering with that step's result."""
    return (yield step)
