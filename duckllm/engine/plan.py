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
                                   # (0 when it is held, or kept on disk, and so loaded)
    tokens_per_s: float = 0.0      # row-prompt tokens/s expected on this machine ...
    speed_source: str = ""         # ... and where that figure comes from
    agreement: bool = False        # a proxy may answer rows (duckllm.proxy) ...
    proxy_share: float | None = None   # ... the share it answered in the task's latest call (None: none yet)

    @property
    def to_compute(self) -> int:
        return len(self.distinct) - len(self.cached)

    @property
    def by_proxy(self) -> int:
        """Of the rows to compute, those the proxy is expected to answer: its latest share."""
        return round(self.to_compute * (self.proxy_share or 0.0))

    @property
    def tokens(self) -> int:
        """Tokens the model is expected to evaluate: those of the rows left to it, and the shared prompt."""
        if not self.to_compute:
            return 0
        return round(self.prompt_tokens * (1 - self.by_proxy / self.to_compute)) + self.prefix_tokens

    @property
    def seconds(self) -> float:
        return self.tokens / self.tokens_per_s if self.tokens_per_s else 0.0
