"""lem backend for OpenAI-compatible HTTP serving engines (vLLM serve, SGLang, trtllm-serve, llama.cpp, TGI)."""

__version__ = "0.3.0"
