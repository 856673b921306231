"""lem plugin: Hugging Face Transformers on PyTorch."""

__version__ = "0.3.0"
