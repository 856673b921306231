"""FAKE ``tensorrt_llm.executor.utils`` (see ``tensorrt_llm/__init__.py``)."""


class RequestError(RuntimeError):
    """One request failed in the executor (the fake raises it for ``fail_every``)."""
