"""duckllm: LLM labeling, cleaning and enrichment as DuckDB functions, with confidences."""
from duckllm.errors import ArgumentError, DuckLLMError, ModelError
from duckllm.sql import connect, register

__version__ = "0.1.0"
__all__ = ["connect", "register", "DuckLLMError", "ModelError", "ArgumentError", "__version__"]
