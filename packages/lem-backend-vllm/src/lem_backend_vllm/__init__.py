"""lem plugin: vLLM."""

__version__ = "0.3.0"
