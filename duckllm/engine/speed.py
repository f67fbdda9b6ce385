"""How fast each model labels on this machine, for `duckllm explain`'s time estimates.

The engine records the row-prompt tokens per second it reached in each real call (per model file
and function), so an estimate is made from this machine's own past work. Before any call, the
estimate falls back to the model's raw prompt-eval speed, measured once, times the share of it
that a cold run reaches (README, Speed: answer tokens and batching overhead cost about 40%).
The figures live in one JSON file under the duckllm home (settings.speeds_path).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

COLD_SHARE = 0.6        # row-prompt tokens/s of a cold duckllm run / raw prompt-eval tokens/s
MIN_TOKENS = 256        # calls smaller than this are mostly the shared prefix: not recorded
RAW = "prompt_eval"      # the raw speed, beside the functions' own
_lock = threading.Lock()


class Speeds:
    """The speeds file of one duckllm home."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, model_id: str, name: str, tokens_per_s: float) -> None:
        """Keep one figure; an unwritable home only costs the estimate."""
        with _lock:
            speeds = self._read()
            speeds.setdefault(model_id, {})[name] = tokens_per_s
            try:
                self.path.write_text(json.dumps(speeds, indent=1, sort_keys=True))
            except OSError:
                pass

    def record(self, model_id: str, function: str, prompt_tokens: int, seconds: float) -> None:
        """Remember the row-prompt tokens/s of a real call."""
        if prompt_tokens >= MIN_TOKENS and seconds > 0:
            self._write(model_id, function, prompt_tokens / seconds)

    def estimate(self, model_id: str, function: str, runtime) -> tuple[float, str]:
        """(row-prompt tokens per second, where that figure comes from): this function's last speed
        with this model file, else the model's raw prompt-eval speed (measured once) scaled down."""
        known = self._read().get(model_id, {})
        if function in known:
            return known[function], "reached by the last run here"
        raw = known.get(RAW)
        if raw is None:
            raw = runtime.prompt_speed()
            self._write(model_id, RAW, raw)
        return raw * COLD_SHARE, f"{COLD_SHARE:.0%} of the measured prompt-eval speed"
