"""The catalog of known models, read from models/*.toml. No model names live in code."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import tomllib

from duckllm.errors import ModelError
from duckllm.resources import package_data

DEFAULT_MODEL = "qwen2.5-coder-1.5b"  # chosen by measurement: see README, "Choosing the default model"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    file: str
    source: dict
    prompt_format: str
    context_length: int
    license: str
    description: str = ""
    size: int | None = None
    sha256: str | None = None
    license_note: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


@cache
def models() -> dict[str, ModelSpec]:
    """All catalog entries by name."""
    specs = {}
    for path in sorted(package_data("models").glob("*.toml")):
        raw = tomllib.loads(path.read_text())
        raw["aliases"] = tuple(raw.get("aliases", ()))
        specs[raw["name"]] = ModelSpec(**raw)
    return specs


def lookup(name: str) -> ModelSpec | None:
    """The catalog entry for a name or alias, or None."""
    for spec in models().values():
        if name == spec.name or name in spec.aliases:
            return spec
    return None


def get(name: str) -> ModelSpec:
    spec = lookup(name)
    if spec is None:
        known = ", ".join(models())
        raise ModelError(
            f"model {name!r} is not in the catalog (known: {known}); "
            f"run 'duckllm models list', or pass the path of a .gguf file"
        )
    return spec
