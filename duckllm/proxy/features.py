"""Cheap features of a row's text for the proxy: hashed character and word n-grams, and the
sentence embedder's vector.

Hashing needs no vocabulary fitted on the data, so a row's features are a function of its text
alone: the same row gets the same features in any chunk, thread or query. llm_match's rows are
pairs of records, whose answer turns on how alike the two are, so a pair gets similarity
features beside the n-grams its records share and do not share.
"""
from __future__ import annotations

import json
import re
import threading

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer

from duckllm.runtime import embed

N_FEATURES = 2 ** 16     # 77 labels x 2 blocks x 65,536 float32 weights = 40 MB at most per fold's model

# float32 throughout, as the embedder's vectors are: SGD fits them about 1.5x as fast as float64
_chars = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), n_features=N_FEATURES, lowercase=True,
                           alternate_sign=False, norm="l2", dtype=np.float32)
_words = HashingVectorizer(analyzer="word", ngram_range=(1, 2), n_features=N_FEATURES, lowercase=True,
                           alternate_sign=False, norm="l2", token_pattern=r"(?u)\b\w+\b", dtype=np.float32)


def text_features(texts: list[str]) -> sparse.csr_matrix:
    """Character 2-4-grams within words and word 1-2-grams, each block L2-normalised."""
    return sparse.hstack([_chars.transform(texts), _words.transform(texts)], format="csr")


_token = re.compile(r"\w+")


def _tokens(text: str) -> set[str]:
    return set(_token.findall(text.lower()))


def _grams(text: str, n: int = 3) -> set[str]:
    text = " ".join(text.lower().split())
    return {text[i:i + n] for i in range(max(1, len(text) - n + 1))}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def pair_features(texts: list[str]) -> sparse.csr_matrix:
    """For llm_match's pairs (JSON [a, b]): how alike the records are (word, number and
    character-trigram overlap, lengths), and the words they share and do not share."""
    rows, shared, differing = [], [], []
    for text in texts:
        a, b = (str(x) for x in json.loads(text))
        ta, tb = _tokens(a), _tokens(b)
        na, nb = {t for t in ta if any(c.isdigit() for c in t)}, {t for t in tb if any(c.isdigit() for c in t)}
        common = len(ta & tb)
        rows.append([_jaccard(ta, tb), _jaccard(na, nb), _jaccard(_grams(a), _grams(b)),
                     common / max(1, min(len(ta), len(tb))),
                     min(len(a), len(b)) / max(1, len(a), len(b)),
                     float(bool(na) and bool(nb) and not na & nb), float(a.strip().lower() == b.strip().lower())])
        shared.append(" ".join(sorted(ta & tb)))
        differing.append(" ".join(sorted(ta ^ tb)))
    similarity = sparse.csr_matrix(np.asarray(rows, dtype=np.float32))
    return sparse.hstack([similarity, _words.transform(shared), _words.transform(differing)], format="csr")


_embedded_lock = threading.Lock()   # guards _embedded, which threads share
# The embedder as the proxy runs it: its products in 8 bits (3x as fast, and the same share), and
# beside the sentence vector (the last layer's states pooled) the third layer's, which keep more
# of the words: on banking77 they took the proxy's share at 0.95 from 0.06 to 0.14 (docs/proxy.md).
EMBEDDER = {"quantized": True, "layers": (embed.LAYERS, 3)}
# A query embeds the examples stored before it once; the next query in the process finds them
# here (3 KB each; the oldest go first), a new process beside the examples (examples.py). A
# text's vector is the same whenever it is computed.
KEEP_EMBEDDED = 50_000
_embedded: dict[str, np.ndarray] = {}


def embedded(texts: list[str]) -> dict[str, np.ndarray]:
    """The vectors this process holds for those texts."""
    with _embedded_lock:
        return {t: _embedded[t] for t in texts if t in _embedded}


def remember(vectors: dict[str, np.ndarray]) -> None:
    """Vectors computed before (kept beside the proxy's examples), used instead of embedding again."""
    with _embedded_lock:
        _embedded.update(vectors)
        while len(_embedded) > KEEP_EMBEDDED:
            del _embedded[next(iter(_embedded))]


def embedding_features(texts: list[str]) -> sparse.csr_matrix:
    """duckllm's sentence embedder (all-MiniLM-L6-v2) as EMBEDDER says, which embeds each text
    alone: a row's vector never depends on its neighbours (duckllm.runtime.embed)."""
    if not texts:
        return sparse.csr_matrix((0, embed.DIM * len(EMBEDDER["layers"])), dtype=np.float32)
    vectors = embedded(texts)
    missing = [t for t in dict.fromkeys(texts) if t not in vectors]
    if missing:
        new = dict(zip(missing, embed.default_embedder(**EMBEDDER).encode(missing)))
        vectors.update(new)
        remember(new)
    return sparse.csr_matrix(np.vstack([vectors[t] for t in texts]))


def text_and_embedding_features(texts: list[str]) -> sparse.csr_matrix:
    return sparse.hstack([text_features(texts), embedding_features(texts)], format="csr")


FEATURES = {"text": text_features, "pair": pair_features,
            "embedding": embedding_features, "text+embedding": text_and_embedding_features}
EMBEDS = {"embedding", "text+embedding"}     # the features whose vectors are kept beside the examples
