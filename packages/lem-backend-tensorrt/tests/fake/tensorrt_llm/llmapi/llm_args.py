"""FAKE ``tensorrt_llm.llmapi.llm_args`` (see ``tensorrt_llm/__init__.py``): the argument classes' field names.

``TrtLlmArgs`` is here, where TensorRT-LLM 1.2 has it (the later source moved it to
``tensorrt_llm._tensorrt_engine.llm_args``; lem looks there first).
"""

from tensorrt_llm._fake import TorchLlmArgs, TrtLlmArgs

__all__ = ["TorchLlmArgs", "TrtLlmArgs"]
