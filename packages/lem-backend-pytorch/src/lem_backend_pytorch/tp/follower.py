"""A tensor-parallel follower: ``python -m lem_backend_pytorch.tp.follower`` (ranks 1..N-1).

Started by :func:`lem_backend_pytorch.tp.leader.launch` with the env:// variables set.
It reads the experiment (a pickled ``ExperimentConfig``) from stdin, joins the
process group, builds its shard of the model exactly as rank 0 builds its own,
then runs every ``generate`` call rank 0 sends (pickled, on stdin) until told
to stop or stdin ends. It exits as soon as rank 0 is gone: the kernel kills it
when its parent dies (``PR_SET_PDEATHSIG``), and a thread checks the parent
pid as well. Ctrl-C is left to rank 0, which stops the followers itself.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from typing import Any

import torch
import torch.distributed as dist

from lem.processes import set_parent_death_signal
from lem_backend_pytorch import loader
from lem_backend_pytorch.options import resolve
from lem_backend_pytorch.tp import shard as tp_shard


def _exit_with_parent(parent: int) -> None:
    set_parent_death_signal(signal.SIGKILL)  # where there is no prctl, the watching thread below still works

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(70)

    if os.getppid() != parent:  # rank 0 died before the death signal was armed
        os._exit(70)
    threading.Thread(target=watch, daemon=True, name="lem-tp-parent-watch").start()


def _build(config: Any, rank: int, size: int, device_type: str) -> Any:
    tp_shard.bind_device(rank, size, device_type)
    tp_shard.join_group(rank, size, device_type)
    torch.manual_seed(config.seed)  # as rank 0 does: replicated random weights stay identical
    model, _, _ = loader.build_model(config.model, config, resolve(config), device_type)
    loader.neutral_generation_config(model)
    return model


def _serve(model: Any, device: str, device_type: str, stdin: Any) -> None:
    while True:
        try:
            kind, call = pickle.load(stdin)
        except EOFError:
            return
        if kind == "stop":
            return
        torch.set_rng_state(call["rng_cpu"])
        if call["rng_cuda"] is not None:
            torch.cuda.set_rng_state(call["rng_cuda"], device)
        with torch.inference_mode():
            model.generate(
                input_ids=call["input_ids"].to(device),
                attention_mask=call["attention_mask"].to(device),
                generation_config=call["generation_config"],
            )


def main() -> None:
    """Follow rank 0 (see the module docstring); a failure is printed for rank 0 to report, exit status 1."""
    _exit_with_parent(int(os.environ["LEM_TP_PARENT"]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    stdin = sys.stdin.buffer
    config = pickle.load(stdin)
    device_type = loader.target_device(resolve(config))
    model = _build(config, rank, size, device_type)
    _serve(model, tp_shard.device_for(device_type, rank), device_type, stdin)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
