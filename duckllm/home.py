"""The one place that decides where duckllm keeps its files."""
import os
from pathlib import Path


def home() -> Path:
    """duckllm's directory for models and caches: $DUCKLLM_HOME, else ~/.cache/duckllm."""
    configured = os.environ.get("DUCKLLM_HOME")
    base = Path(configured).expanduser() if configured else Path.home() / ".cache" / "duckllm"
    base.mkdir(parents=True, exist_ok=True)
    return base


def package_data(name: str) -> Path:
    """A data folder shipped with duckllm (models/, sql_macros/): inside the wheel or the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"duckllm data folder {name!r} is missing; reinstall duckllm")
