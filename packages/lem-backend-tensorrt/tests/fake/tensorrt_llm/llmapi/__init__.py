"""FAKE ``tensorrt_llm.llmapi`` (see ``tensorrt_llm/__init__.py``): config classes checked against the surface."""

from tensorrt_llm._fake import (
    LLM,
    BuildConfig,
    CalibConfig,
    CudaGraphConfig,
    DraftTargetDecodingConfig,
    KvCacheConfig,
    QuantAlgo,
    QuantConfig,
    SchedulerConfig,
)

__all__ = [
    "LLM",
    "BuildConfig",
    "CalibConfig",
    "CudaGraphConfig",
    "DraftTargetDecodingConfig",
    "KvCacheConfig",
    "QuantAlgo",
    "QuantConfig",
    "SchedulerConfig",
]
