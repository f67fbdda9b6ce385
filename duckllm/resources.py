"""Data folders shipped with duckllm: the model catalog (models/) and the SQL macros (sql_macros/)."""
from pathlib import Path


def package_data(name: str) -> Path:
    """A data folder shipped with duckllm (models/, sql_macros/): inside the wheel or the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"duckllm data folder {name!r} is missing; reinstall duckllm")
