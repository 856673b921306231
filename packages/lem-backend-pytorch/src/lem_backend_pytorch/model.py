"""The model handle (what ``LoadedModel.handle`` holds) and the installed versions the backend asks about.

Every module of the backend may import this one: it imports neither torch nor
transformers, nor any other module of the backend but :mod:`options`.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import attrs

from lem_backend_pytorch.options import PytorchOptions


@attrs.define
class TorchModel:
    """What ``LoadedModel.handle`` holds. Mutable on purpose: ``close`` drops the model to free memory."""

    model: Any
    tokenizer: Any
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    device: Any
    options: PytorchOptions
    assistant: Any = None
    #: The running :class:`~lem_backend_pytorch.continuous.engine.ContinuousEngine` when ``engine = "continuous"``.
    continuous: Any = None
    #: The other ranks (:class:`~lem_backend_pytorch.tp.leader.Ranks`) when ``tensor_parallel_size > 1``.
    ranks: Any = None


def version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, ``None`` when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def transformers_major() -> int:
    """Major version of the installed transformers."""
    return int((version("transformers") or "0").split(".")[0])
