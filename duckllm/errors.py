"""Errors a user can act on: each message names the cause and the fix."""


class DuckLLMError(Exception):
    """Base class for errors duckllm raises on purpose."""


class ModelError(DuckLLMError):
    """A model cannot be found, fetched, verified or loaded."""


class ArgumentError(DuckLLMError):
    """A function was called with an argument it cannot use."""
