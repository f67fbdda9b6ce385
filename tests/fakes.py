"""A fake runtime: runs the answer programs with simple rules, instantly, and records the texts."""
from __future__ import annotations

import math
import re

from duckllm.prompt_format import FORMATS
from duckllm.runtime import Answer, Choice, Generation, Pick, Say, Usage


class FakeRuntime:
    """Pick: the first option named in the text (an or_end Pick: each named option once, then
    the end), else the first option; Write: text title-cased, the first number, or the first
    capitalised word of the text for a span. Its tokens are words; it counts what it is fed as
    llama.cpp's runtime does: the shared prompt once (prefix_tokens), then each row's own turns,
    text and tail (usage.prompt_tokens)."""

    def __init__(self):
        self.format = FORMATS["chatml"]
        self.usage = Usage()
        self.calls: list[list[str]] = []
        self.prefix_tokens = 0

    def run(self, prompt, texts, program, answer_tokens, on_done=None, row_prefixes=None):
        self.calls.append(list(texts))
        self.prefix_tokens = len(self.tokenize_prompt(prompt.shared))
        tail = len(self.tokenize(prompt.tail, special=True))
        for i, text in enumerate(texts):
            own = self.tokenize_prompt(row_prefixes[i]) if row_prefixes else []
            self.usage.prompt_tokens += len(own) + len(self.tokenize(text)) + tail
        out = []
        for i, text in enumerate(texts):
            steps, reply, used = program(i, len(text.split())), None, set()
            try:
                while True:
                    reply = self.answer(steps.send(reply), text, used)
            except StopIteration as stop:
                out.append(Answer(stop.value))
            self.answered(i, out[-1], on_done)
        return out

    def answered(self, i, answer, on_done):
        if on_done:
            on_done(i, answer)

    @staticmethod
    def answer(step, text, used):
        if isinstance(step, Say):
            return None
        if isinstance(step, Pick):
            named = [i for i, o in enumerate(step.options) if o.strip().lower() in text.lower()]
            if step.or_end:
                named = [i for i in named if i not in used]
                index = named[0] if named else len(step.options)
                used.add(index)
            else:
                index = named[0] if named else 0
            p = 0.9 if named else 0.4
            return Choice(index=index, token_logprobs=[math.log(p)], choice_logprob=math.log(p))
        if step.kind == "span":
            word = re.search(r"\b[A-Z]\w+", text)
            return Generation(word.group(0) if word else "", [math.log(0.7)])
        if step.kind in ("integer", "number"):
            number = re.search(r"-?\d+(\.\d+)?", text)
            return Generation(number.group(0) if number else "null", [math.log(0.6)])
        return Generation(" ".join(text.split()).title(), [math.log(0.8)])

    def describe(self):
        return {"device": "fake"}

    @staticmethod
    def tokenize(text, add_bos=False, special=False):
        return text.split()

    @staticmethod
    def tokenize_prompt(text, add_bos=False):
        return str(text).split()

    @staticmethod
    def prompt_speed():
        return 100.0

    @staticmethod
    def prefix_ready(prompt):
        return False


class SharedLetters:
    """A stand-in sentence embedder: the items most similar to a text are those sharing a letter
    with it."""

    def encode(self, texts):
        return list(texts)

    def nearest(self, vectors, texts, k):
        return [[i for i, v in enumerate(vectors) if set(v) & set(text)][:k] for text in texts]
