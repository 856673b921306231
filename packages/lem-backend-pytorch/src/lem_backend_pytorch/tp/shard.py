"""What every tensor-parallel rank does to hold its shard of the model, rank 0 and followers alike.

A rank computes on its own device (:func:`device_for`, :func:`bind_device`),
joins the one process group from the ``env://`` variables rank 0 set
(:func:`join_group`; gloo on the CPU, NCCL on GPUs) and builds the model with
transformers' own tensor-parallel plan (:func:`distributed_config`,
:func:`random_model` for random weights), so each rank holds its shard.
Starting, feeding and supervising the ranks is :mod:`lem_backend_pytorch.tp.leader`'s
part (rank 0); a follower's main loop is :mod:`lem_backend_pytorch.tp.follower`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from lem.errors import BackendError

#: Seconds a collective may wait for the other ranks (loading a large checkpoint included).
PG_TIMEOUT_S = 1800.0


def device_for(device_type: str, rank: int) -> str:
    """The device rank ``rank`` computes on: ``cuda:<rank>`` or ``cpu``."""
    return f"cuda:{rank}" if device_type == "cuda" else "cpu"


def bind_device(rank: int, size: int, device_type: str) -> None:
    """Make ``cuda:<rank>`` this thread's device; on the CPU give the rank its share of the cores."""
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    else:
        # Ranks share the machine's cores: N ranks each with every core would oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))


def join_group(rank: int, size: int, device_type: str) -> None:
    """Join the process group from the env:// variables (blocks until every rank has joined)."""
    dist.init_process_group(
        backend="nccl" if device_type == "cuda" else "gloo",
        init_method="env://",
        rank=rank,
        world_size=size,
        timeout=timedelta(seconds=PG_TIMEOUT_S),
    )


def distributed_config(size: int) -> Any:
    """``from_pretrained(distributed_config=)``: transformers' own tensor-parallel plan over ``size`` ranks."""
    try:
        from transformers.distributed.configuration_utils import DistributedConfig
    except ImportError:
        from transformers import __version__

        raise BackendError(
            f"sharding.tensor_parallel_size = {size}: the installed transformers {__version__} has no "
            "transformers.distributed.DistributedConfig (hint: pip install 'transformers>=5.17')"
        ) from None
    return DistributedConfig(tp_plan="auto", tp_size=size)


def random_model(hf_config: Any, kwargs: dict[str, Any]) -> Any:
    """A random-weight model sharded by the plan: ``from_pretrained`` of a checkpoint that holds no tensors.

    transformers then initialises every (missing) weight itself, each rank its own shard, on its
    device; the same seed on every rank keeps the replicated weights identical. The numbers differ
    from a ``tp = 1`` random model's (each shard is drawn on its own), the shapes and cost do not.
    """
    with tempfile.TemporaryDirectory(prefix="lem-tp-random-") as path:
        hf_config.save_pretrained(path)
        save_file({}, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def leave_group() -> None:
    """Leave the process group, if this process joined one (a broken group is reported, not raised)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as exc:  # after a dead rank the group may be broken already; nothing to free then
            print(f"lem: leaving the process group: {exc}", file=sys.stderr, flush=True)
