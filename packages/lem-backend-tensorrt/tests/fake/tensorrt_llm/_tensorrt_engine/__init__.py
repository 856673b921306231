"""FAKE ``tensorrt_llm._tensorrt_engine`` (see ``tensorrt_llm/__init__.py``): the engine flow's ``LLM``."""

from tensorrt_llm._fake import TrtLLM as LLM

__all__ = ["LLM"]
