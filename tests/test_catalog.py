import pytest

from duckllm.errors import ModelError
from duckllm.prompt_format import FORMATS
from duckllm.store import catalog


def test_every_catalog_entry_is_complete():
    models = catalog.models()
    assert catalog.DEFAULT_MODEL in models
    for spec in models.values():
        assert spec.file.endswith(".gguf")
        assert spec.prompt_format in FORMATS
        assert spec.context_length > 0 and spec.license
        assert spec.source["kind"] in ("pypi", "hub")
        if spec.source["kind"] == "pypi":  # what we can fetch here, we can pin
            assert spec.size and len(spec.sha256) == 64


def test_production_model_comes_from_the_hub_with_its_licence():
    spec = catalog.get("llama-3-refueled")
    assert spec.source == {"kind": "hub", "repo": "mradermacher/Llama-3-Refueled-GGUF",
                           "filename": "Llama-3-Refueled.Q4_K_M.gguf"}
    assert spec.license == "CC-BY-NC-4.0" and "non-commercial" in spec.license_note
    assert spec.prompt_format == "llama3"


def test_aliases_find_their_model():
    assert catalog.get("smollm2").name == "smollm2-135m"


def test_unknown_model_says_how_to_find_one():
    with pytest.raises(ModelError, match="duckllm models list"):
        catalog.get("gpt-17")
