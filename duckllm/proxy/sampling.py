"""Which rows go to the model as samples, decided by a keyed hash of the row's own text.

A row's draw depends on nothing but its text and the key: not on its position, its neighbours,
the chunk DuckDB handed over or the thread that runs it. So a table sorted by label or date gets
the same random sample as the same rows shuffled, and the same query draws the same rows again.
"""
from __future__ import annotations

import hashlib

DEFAULT_SEED = 0


def key_of(seed: int = DEFAULT_SEED) -> bytes:
    """The hash key for a seed: other seeds draw other, equally random samples."""
    return hashlib.sha256(f"duckllm proxy sample {seed}".encode()).digest()[:16]


def _digest(key: bytes, text: str, size: int = 16, person: bytes = b"") -> bytes:
    return hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), key=key, digest_size=size,
                           person=person).digest()


def draw(key: bytes, text: str) -> float:
    """A uniform number in [0, 1) for the text: the row is in a sample of rate s when draw < s."""
    return int.from_bytes(_digest(key, text)[:8], "big") / 2.0 ** 64


def rank(key: bytes, text: str) -> float:
    """A uniform number in [0, 1), apart from the draw and the fold: which stored rows train the
    proxy when there are more than it can train on (classifier.TRAIN_CELLS)."""
    return int.from_bytes(_digest(key, text, size=8, person=b"train"), "big") / 2.0 ** 64


def fold(key: bytes, text: str, folds: int) -> int:
    """The cross-fitting fold of a labeled row, from bits of its hash the draw does not use."""
    return int.from_bytes(_digest(key, text)[8:], "big") % folds
