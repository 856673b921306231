"""FAKE ``tensorrt_llm.llmapi.llm_args`` (see ``tensorrt_llm/__init__.py``): ``TorchLlmArgs.model_fields`` only."""

from tensorrt_llm._fake import TorchLlmArgs

__all__ = ["TorchLlmArgs"]
