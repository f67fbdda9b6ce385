"""Process-wide counters behind SELECT * FROM duckllm_stats().

Every non-NULL, non-blank row is answered one way: rows = NULL or blank + dedup_hits (an
identical text in the same call) + cache_hits (from the result cache) + model_rows + proxy_rows
(answered by the proxy of a call with agreement, duckllm.proxy).
"""
from __future__ import annotations

import threading

FIELDS = {"calls": int, "rows": int, "cache_hits": int, "dedup_hits": int, "model_rows": int, "proxy_rows": int,
          "prompt_tokens": int, "generated_tokens": int, "seconds": float, "device": str}


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._values = {name: kind() for name, kind in FIELDS.items()}
            self._values["device"] = "none loaded"

    def add(self, **counts) -> None:
        with self._lock:
            for name, n in counts.items():
                self._values[name] += n

    def set(self, **values) -> None:
        with self._lock:
            self._values.update(values)

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._values)


STATS = Stats()
