"""lem backend: llama.cpp (GGUF) through llama-cpp-python."""

__version__ = "0.3.0"
