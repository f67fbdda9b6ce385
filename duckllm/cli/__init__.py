"""The command line: `duckllm sql`, `shell`, `explain`, `models`, `cache`, `bench`, `run`, `info`."""
from duckllm.cli.commands import main

__all__ = ["main"]
