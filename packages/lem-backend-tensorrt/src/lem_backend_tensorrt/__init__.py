"""lem plugin: NVIDIA TensorRT-LLM (PyTorch runtime, per-token streaming through generate_async)."""

__version__ = "0.3.0"
