"""Few-shot examples given from SQL: a list of STRUCT(input, output).

All examples go into the shared prompt as earlier chat turns (evaluated once for every row), or,
with nearest := k, each row gets the k examples most similar to it (by sentence embedding) as
chat turns of its own.
"""
from __future__ import annotations

from typing import Callable

from duckllm.errors import ArgumentError

SHAPE = "a list of STRUCTs such as [{'input': 'refund me', 'output': 'refund'}]"


def parse(function: str, raw, check_output: Callable[[str], str | None] | None = None) -> list[tuple[str, str]]:
    """(input, output) pairs; check_output returns a problem with an output, or None."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ArgumentError(f"{function}: examples must be {SHAPE}, got {raw!r}")
    pairs = []
    for example in raw:
        if not isinstance(example, dict) or set(example) != {"input", "output"}:
            raise ArgumentError(f"{function}: each example must be a STRUCT(input, output); got {example!r}. "
                                f"examples must be {SHAPE}")
        given, wanted = example["input"], example["output"]
        if given is None or wanted is None or not str(given).strip():
            continue     # a labeled table with gaps: skip its incomplete rows
        problem = check_output(str(wanted)) if check_output else None
        if problem:
            raise ArgumentError(f"{function}: example {given!r} -> {wanted!r}: {problem}")
        pairs.append((str(given), str(wanted)))
    return pairs


def as_turns(pairs: list[tuple[str, str]], render: Callable[[str], str],
             answer: Callable[[str], str]) -> list[tuple[str, str]]:
    """Examples as earlier (user, assistant) chat turns."""
    turns = []
    for given, wanted in pairs:
        turns += [("user", render(given)), ("assistant", answer(wanted))]
    return turns


class Nearest:
    """For each text, the k items most similar to it by sentence embedding. prepare() embeds a
    call's texts together up front; answers are remembered for the rows that follow."""
    REMEMBER = 10_000

    def __init__(self, items: list[str], k: int):
        from duckllm.runtime.embed import default_embedder
        self.embedder, self.k = default_embedder(), k
        self.vectors = self.embedder.encode(items)
        self.memo: dict[str, list[int]] = {}

    def prepare(self, texts) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if len(self.memo) + len(todo) > self.REMEMBER:
            self.memo.clear()
        self.memo.update(zip(todo, self.embedder.nearest(self.vectors, todo, self.k)))

    def __call__(self, text: str) -> list[int]:
        if text not in self.memo:
            self.prepare([text])
        return self.memo[text]


def nearest_turns(pairs: list[tuple[str, str]], k: int, render: Callable[[str], str],
                  answer: Callable[[str], str]):
    """(prepare, turns): turns(text) is the row's k most similar examples as chat turns, the
    most similar last (nearest the row)."""
    nearest = Nearest([given for given, _ in pairs], k)

    def turns(text: str) -> list[tuple[str, str]]:
        return as_turns([pairs[i] for i in reversed(nearest(text))], render, answer)
    return nearest.prepare, turns
