"""The model runtime seam: batches of rows in, answers out. Knows nothing of DuckDB.

A runtime answers two kinds of request over many rows at once:
  choose   - pick one of a fixed set of options (constrained decoding over the options' tokens)
  generate - free text up to a token limit
Both take a Prompt whose shared part is the same for every row, so a runtime may evaluate it
once; both return per-token log-probabilities so callers can compute confidences, and call
on_done(row index, answer) as each row finishes, so callers can keep finished work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from ..prompt_format import Format, Prompt


@dataclass
class Choice:
    index: int                     # which option was chosen
    token_logprobs: list[float]    # log P(token) over the whole vocabulary, per token of the option
    choice_logprob: float          # log P(option) when decoding may only produce the options
    truncated: bool = False        # the row's text was cut to fit the context


@dataclass
class Generation:
    text: str
    token_logprobs: list[float]    # per token of text (the end token is not part of the answer)
    truncated: bool = False        # the row's text was cut to fit the context
    hit_limit: bool = False        # stopped at max tokens, not at the end of the answer


@dataclass
class Usage:
    prompt_tokens: int = 0      # row prompts evaluated (the shared prefix is not counted)
    generated_tokens: int = 0   # answer tokens fed back: decoded, or fed only to be scored


class Runtime(Protocol):
    format: Format
    usage: Usage

    def choose(self, prompt: Prompt, texts: Sequence[str], options: Sequence[str],
               on_done: Callable[[int, Choice], None] | None = None, score_rest: bool = True) -> list[Choice]: ...

    def generate(self, prompt: Prompt, texts: Sequence[str], max_tokens: int, per_input_token: float = 0.0,
                 on_done: Callable[[int, Generation], None] | None = None) -> list[Generation]: ...

    def describe(self) -> dict: ...
