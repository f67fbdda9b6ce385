"""What the model is fed for a task's rows, assembled in one place: a real call runs it and
`duckllm explain` counts it, so the two cannot drift apart.

A row's prompt is the shared part (system message, examples, the start of the row's user turn:
evaluated once per call), the row's own turns (its nearest examples, when the task has them), the
row's text as the task renders it (a row's own label list, a pair of records), and the tail (the
end of the user turn and the start of the answer).
"""
from __future__ import annotations

from dataclasses import dataclass

from duckllm.prompt_format import Format, Prompt, Text
from duckllm.tasks import Task


@dataclass(frozen=True)
class RowPrompts:
    prompt: Prompt                      # the shared part, and the tail after each row's text
    texts: list[str]                    # each row's text as the model reads it (task.render)
    prefixes: list[Text] | None         # each row's own turns before its text, or None


def assemble(task: Task, fmt: Format, texts: list[str]) -> RowPrompts:
    """The prompts of these rows, as runtime.run takes them."""
    task.prepare(texts)         # batch work first (embeddings for preselect and nearest)
    prompt = fmt.split(list(task.messages))
    prefixes = None
    if task.row_turns:          # each row opens its own user turn after turns of its own
        prompt = Prompt(fmt.render(list(task.messages)), prompt.tail)
        prefixes = [fmt.open_turn(task.row_turns(t)) for t in texts]
    return RowPrompts(prompt, [task.render(t) for t in texts], prefixes)


def token_counts(runtime, rows: RowPrompts) -> tuple[int, int]:
    """(tokens of the shared part, tokens of the rows): what runtime.run evaluates for them,
    the shared part once. A text too long for the context is counted whole, though it is cut."""
    bos = len(runtime.tokenize("x", add_bos=True)) - len(runtime.tokenize("x"))   # 1 where the model starts with BOS
    shared = bos + len(runtime.tokenize_prompt(rows.prompt.shared))
    tail = len(runtime.tokenize(rows.prompt.tail, special=True))
    own = sum(len(runtime.tokenize_prompt(p)) for p in rows.prefixes or ())
    return shared, own + sum(len(runtime.tokenize(t)) + tail for t in rows.texts)
