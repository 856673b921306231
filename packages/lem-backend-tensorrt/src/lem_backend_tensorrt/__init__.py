"""lem plugin: TensorRT-LLM."""

__version__ = "0.1.0"
