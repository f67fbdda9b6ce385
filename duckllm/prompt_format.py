"""Chat prompt formats: how a list of messages becomes the text a model was tuned on.

A prompt is split where rows differ: `shared` (system, examples, the start of the row's user
turn) is the same for every row of a call and is evaluated once; each row adds its text, then
`tail` (the end of the user turn and the start of the answer), then the answer ends with `end`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    shared: str   # identical for every row: system message, examples, start of the user turn
    tail: str     # after each row's text: end of the user turn, start of the answer


@dataclass(frozen=True)
class Format:
    name: str
    system: str       # wraps the system message
    user: str         # wraps a user message
    assistant: str    # wraps an assistant message (few-shot answers)
    end: str          # the token that closes an answer

    def render(self, messages: list[tuple[str, str]]) -> str:
        wrappers = {"system": self.system, "user": self.user, "assistant": self.assistant}
        return "".join(wrappers[role].replace("{}", content) for role, content in messages)

    def split(self, messages: list[tuple[str, str]]) -> Prompt:
        """The prompt around one row's text, which is the last user message."""
        return Prompt(self.render(messages) + self.user_open, self.user_close + self.assistant.split("{}")[0])

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
