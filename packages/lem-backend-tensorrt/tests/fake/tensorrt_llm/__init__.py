"""A FAKE ``tensorrt_llm`` for lem's tests only: it is not TensorRT-LLM and runs no model.

Why: TensorRT-LLM cannot be installed on the machines lem is tested on (its
package index entry is a stub that downloads the real wheel from NVIDIA's own
index, and it needs CUDA). This fake stands in for it so the backend's own code
runs for real: every constructor and call checks its arguments against the API
surface extracted from TensorRT-LLM's source (``tests/data/trtllm_api.json``)
and raises ``TypeError`` for one TensorRT-LLM would refuse; ``LLM.generate_async``
streams scripted tokens the way TensorRT-LLM's ``RequestOutput`` does
(``CompletionOutput.token_ids`` grows, ``token_ids_diff`` is what was added).

Scripted with the ``LEM_FAKE_TRTLLM`` environment variable (JSON): ``step_s``
(seconds per token, default 0.002), ``fail_every`` (every n-th request fails
with ``RequestError`` after one token), ``crash_on`` (the n-th request raises
``RuntimeError``: the engine is gone), ``fail_load`` (``LLM(...)`` raises),
``log`` (a JSONL file where ``init``, ``shutdown``, ``abort`` and in-flight
counts are written, so tests in other processes can check them).
"""

from tensorrt_llm._fake import LLM, SamplingParams

__version__ = "0.0.0+lem.fake"
__all__ = ["LLM", "SamplingParams", "__version__"]
