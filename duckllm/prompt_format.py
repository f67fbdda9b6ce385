"""Chat prompt formats: how a list of messages becomes the text a model was tuned on.

A prompt is split where rows differ: `shared` (system, examples, the start of the row's user
turn) is the same for every row of a call and is evaluated once; each row adds its text, then
`tail` (the end of the user turn and the start of the answer), then the answer ends with `end`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Text:
    """Prompt text in pieces: the template's markup, whose special tokens are read as control
    tokens, and content (instructions, labels, examples), read as plain text whatever markers
    it holds, so an example quoting '<|im_end|>' cannot close its turn."""
    pieces: tuple[tuple[str, bool], ...] = ()     # (text, is markup), neighbours of one kind joined

    @staticmethod
    def markup(text: str) -> Text:
        return Text(((text, True),) if text else ())

    @staticmethod
    def content(text: str) -> Text:
        return Text(((text, False),) if text else ())

    def __add__(self, other: Text) -> Text:
        if self.pieces and other.pieces and self.pieces[-1][1] == other.pieces[0][1]:
            joined = (self.pieces[-1][0] + other.pieces[0][0], other.pieces[0][1])
            return Text(self.pieces[:-1] + (joined,) + other.pieces[1:])
        return Text(self.pieces + other.pieces)

    def __str__(self) -> str:
        return "".join(text for text, _ in self.pieces)


@dataclass(frozen=True)
class Prompt:
    shared: Text  # identical for every row: system message, examples, start of the user turn
    tail: str     # markup after each row's text: end of the user turn, start of the answer


@dataclass(frozen=True)
class Format:
    name: str
    system: str       # wraps the system message
    user: str         # wraps a user message
    assistant: str    # wraps an assistant message (few-shot answers)
    end: str          # the token that closes an answer

    def render(self, messages: list[tuple[str, str]]) -> Text:
        wrappers = {"system": self.system, "user": self.user, "assistant": self.assistant}
        text = Text()
        for role, content in messages:
            before, after = wrappers[role].split("{}")
            text = text + Text.markup(before) + Text.content(content) + Text.markup(after)
        return text

    def open_turn(self, messages: list[tuple[str, str]]) -> Text:
        """The messages, then the start of the user turn that holds a row's text."""
        return self.render(messages) + Text.markup(self.user_open)

    def split(self, messages: list[tuple[str, str]]) -> Prompt:
        """The prompt around one row's text, which is the last user message."""
        return Prompt(self.open_turn(messages), self.user_close + self.assistant.split("{}")[0])

    @property
    def user_open(self) -> str:
        return self.user.split("{}")[0]

    @property
    def user_close(self) -> str:
        return self.user.split("{}")[1]


FORMATS = {
    "chatml": Format(
        name="chatml",
        system="<|im_start|>system\n{}<|im_end|>\n",
        user="<|im_start|>user\n{}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{}<|im_end|>\n",
        end="<|im_end|>",
    ),
    "llama3": Format(
        name="llama3",
        system="<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n{}<|eot_id|>",
        end="<|eot_id|>",
    ),
}


def detect(chat_template: str | None) -> Format:
    """The format of a GGUF file that is not in the catalog, from its embedded chat template."""
    template = chat_template or ""
    if "<|start_header_id|>" in template:
        return FORMATS["llama3"]
    return FORMATS["chatml"]
