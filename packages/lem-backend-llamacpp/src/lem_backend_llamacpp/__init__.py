"""lem backend: llama.cpp (GGUF) through llama-cpp-python."""

__version__ = "0.1.0"
