"""Plans: what calls would ask of the model, counted instead of answered (`duckllm explain`).

A plan is opened on an engine and named by an id; a call that carries that id (the SQL macros
pass getvariable('duckllm_plan')) is counted into it and answers NULL. Calls without it, from any
thread or connection, are answered as ever: planning is a property of the call, not a mode of
the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Plan:
    """What one task would ask of one model."""
    function: str
    model: str
    rows: int = 0                  # non-NULL rows
    blank: int = 0                 # empty or whitespace texts: answered without the model
    distinct: set[str] = field(default_factory=set)   # cache keys of the distinct other texts
    cached: set[str] = field(default_factory=set)     # those already in the result cache
    prompt_tokens: int = 0         # the rows' own tokens (their turns, text, chat tail) to compute
    prefix_tokens: int = 0         # the shared prompt, evaluated once when anything is computed
    tokens_per_s: float = 0.0      # row-prompt tokens/s expected on this machine ...
    speed_source: str = ""         # ... and where that figure comes from

    @property
    def to_compute(self) -> int:
        return len(self.distinct) - len(self.cached)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.prefix_tokens if self.to_compute else 0

    @property
    def seconds(self) -> float:
        return self.tokens / self.tokens_per_s if self.tokens_per_s else 0.0
