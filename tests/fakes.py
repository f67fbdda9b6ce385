"""A fake runtime: answers instantly and records what it was asked."""
from __future__ import annotations

import math

from duckllm.prompt_format import FORMATS
from duckllm.runtime import Choice, Generation, Usage


class FakeRuntime:
    """choose: the first option named in the text, else the first option; generate: title case."""

    def __init__(self):
        self.format = FORMATS["chatml"]
        self.usage = Usage()
        self.calls: list[tuple[str, list[str]]] = []

    def choose(self, prompt, texts, options, on_done=None, score_rest=True):
        self.calls.append(("choose", list(texts)))
        out = []
        for text in texts:
            index = next((i for i, o in enumerate(options) if o.lower() in text.lower()), 0)
            p = 0.9 if index or options[0].lower() in text.lower() else 0.4
            out.append(Choice(index=index, token_logprobs=[math.log(p)], choice_logprob=math.log(p)))
            self.answered(len(out) - 1, out[-1], on_done)
        return out

    def generate(self, prompt, texts, max_tokens, per_input_token=0.0, on_done=None):
        self.calls.append(("generate", list(texts)))
        out = []
        for text in texts:
            out.append(Generation(text=" ".join(text.split()).title(), token_logprobs=[math.log(0.8)]))
            self.answered(len(out) - 1, out[-1], on_done)
        return out

    def answered(self, i, answer, on_done):
        if on_done:
            on_done(i, answer)

    def describe(self):
        return {"device": "fake"}
