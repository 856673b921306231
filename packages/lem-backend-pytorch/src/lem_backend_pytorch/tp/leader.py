"""Tensor parallelism (``[sharding] tensor_parallel_size = N``): N ranks, one process each.

The experiment's worker process is rank 0. :func:`launch` starts ranks 1..N-1
as ``python -m lem_backend_pytorch.tp.follower`` subprocesses with the ``env://``
rendezvous on 127.0.0.1 and a free port (``MASTER_ADDR``, ``MASTER_PORT``,
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, which rank 0 sets for itself too).
Every rank then joins one process group (gloo on the CPU, NCCL on GPUs, rank r
on ``cuda:r``) and builds the model with transformers' own tensor-parallel plan
(``from_pretrained(distributed_config=DistributedConfig(tp_plan="auto"))``,
present in transformers 5.17 and 5.24), so each rank holds its shard: what
every rank does for that is :mod:`lem_backend_pytorch.tp.shard`; this module is
rank 0's part, starting the followers, feeding them and watching them.

Only rank 0 serves traffic and emits TokenEvents. Before each ``generate``
call it sends the call's inputs (token ids, attention mask, the
``GenerationConfig`` and its RNG state) to every follower over the follower's
stdin, a plain pipe, and the followers run the same ``generate``; the
collectives inside the forward passes then match. Nothing collective happens
between calls, so an idle baseline or a cool-down of any length cannot time
out a process group. Greedy and sampled outputs agree across ranks: the logits
are gathered (the same numbers on every rank) and each follower samples from
rank 0's RNG state.

A follower's output (stdout and stderr) is kept, its last lines, by a reader
thread; a monitor thread notices a follower that exits, records which rank,
how it ended and those lines, kills the other followers, and the next (or the
running) ``generate`` raises that reason. A follower exits when rank 0 closes
its stdin or dies (parent-death signal, and a thread watching the parent pid);
:func:`close` stops the followers and kills any left after a grace period.
"""

from __future__ import annotations

import atexit
import collections
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import torch
from transformers import AutoConfig

from lem import architectures
from lem.config import ExperimentConfig
from lem.errors import BackendError
from lem.processes import free_port
from lem_backend_pytorch.tp.checks import check_model
from lem_backend_pytorch.tp.shard import bind_device, device_for, join_group, leave_group

T = TypeVar("T")
#: Seconds followers have to exit after being told to stop, before they are killed.
STOP_GRACE_S = 5.0
#: Seconds rank 0 waits, after a failed generate, for a follower's death to explain it.
EXPLAIN_WAIT_S = 5.0
#: Lines of a follower's output kept for the failure reason.
TAIL_LINES = 12
#: The environment of the env:// rendezvous (saved and restored in rank 0's process).
ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LEM_TP_PARENT")


@attrs.define
class Follower:
    """One rank > 0: its process and the last lines it printed."""

    rank: int
    proc: subprocess.Popen[bytes]
    tail: collections.deque[str]
    reader: threading.Thread


@attrs.define
class Ranks:
    """The ranks of one tensor-parallel model. Mutable on purpose: it holds running processes."""

    size: int
    device_type: str
    backend: str
    port: int
    followers: list[Follower] = attrs.field(factory=list)
    #: Why a follower ended before it was told to (the experiment's failure reason), else ``None``.
    failure: str | None = None
    closing: bool = False
    #: Rank 0 is inside a ``generate`` (the followers too, possibly blocked in one of its collectives).
    busy: bool = False
    saved_env: dict[str, str | None] = attrs.field(factory=dict)
    saved_threads: int | None = None
    monitor: threading.Thread | None = None


def rank_env(rank: int, size: int, port: int) -> dict[str, str]:
    """The env:// rendezvous variables of ``rank`` (transformers reads ``LOCAL_RANK`` to pick the device)."""
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(size),
        "LEM_TP_PARENT": str(os.getpid()),
    }


def start(config: ExperimentConfig, path: str, device_type: str) -> Ranks:
    """Check that transformers can shard the model at ``path`` over the ranks, then :func:`launch` them."""
    revision = None if architectures.is_builtin(config.model) else config.revision
    hf_config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=config.trust_remote_code)
    check_model(hf_config, config)
    return launch(config, device_type)


def on_ranks(ranks: Ranks, build: Callable[[], T]) -> T:
    """``build()`` (rank 0's part of loading); on failure the ranks are closed and a dead rank's reason raised."""
    try:
        return build()
    except BaseException as exc:
        raised = explained(ranks, exc) if isinstance(exc, Exception) else exc
        close(ranks)
        if raised is exc:
            raise
        raise raised from exc


def launch(config: ExperimentConfig, device_type: str) -> Ranks:
    """Start ranks 1..N-1 and make this process rank 0 of the group (see the module docstring)."""
    size = config.sharding.tensor_parallel_size
    ranks = Ranks(size, device_type, "nccl" if device_type == "cuda" else "gloo", free_port())
    ranks.saved_env = {k: os.environ.get(k) for k in ENV_KEYS}
    if device_type == "cpu":
        ranks.saved_threads = torch.get_num_threads()
    atexit.register(_kill, ranks)  # whatever happens to this process's Python, no follower outlives it
    try:
        _start_followers(ranks, pickle.dumps(config))
        os.environ.update(rank_env(0, size, ranks.port))
        bind_device(0, size, device_type)
        _join_watching(ranks)
    except BaseException:
        close(ranks)  # no follower is left waiting for a rank 0 that gave up
        raise
    return ranks


def _start_followers(ranks: Ranks, job: bytes) -> None:
    size = ranks.size
    for rank in range(1, size):
        env = {**os.environ, **rank_env(rank, size, ranks.port)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "lem_backend_pytorch.tp.follower"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        reader = threading.Thread(target=_read, args=(proc, tail), daemon=True, name=f"lem-tp-rank{rank}-out")
        reader.start()
        ranks.followers.append(Follower(rank, proc, tail, reader))
        _send(ranks, proc, job)
    ranks.monitor = threading.Thread(target=_watch, args=(ranks,), daemon=True, name="lem-tp-monitor")
    ranks.monitor.start()


def _join_watching(ranks: Ranks) -> None:
    # Rank 0's rendezvous waits for every follower; one that died before joining would keep it waiting
    # for shard.PG_TIMEOUT_S. It joins on a helper thread, so the wait ends as soon as the monitor saw a death.
    errors: list[BaseException] = []

    def join() -> None:
        try:
            join_group(0, ranks.size, ranks.device_type)
        except BaseException as exc:  # handed to the waiting thread
            errors.append(exc)

    joiner = threading.Thread(target=join, daemon=True, name="lem-tp-join")
    joiner.start()
    while joiner.is_alive():
        joiner.join(0.1)
        if ranks.failure is not None:
            raise BackendError(ranks.failure)
    if errors:
        raise explained(ranks, errors[0]) from errors[0]


def _read(proc: subprocess.Popen[bytes], tail: collections.deque[str]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:  # drained to the end, so a chatty follower never blocks on a full pipe
        line = raw.decode("utf-8", "replace").rstrip().split("\r")[-1]  # a progress bar: its last state
        if line.strip():
            tail.append(line)


def _send(ranks: Ranks, proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
    except OSError:  # the follower is gone: its death is the reason
        raise BackendError(_wait_for_failure(ranks) or "a tensor-parallel rank closed its input") from None


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _watch(ranks: Ranks) -> None:
    while not ranks.closing:
        for f in ranks.followers:
            code = f.proc.poll()
            if code is None:
                continue
            f.reader.join(2.0)  # its last lines
            if ranks.closing:
                return
            last = " | ".join(f.tail) or "(no output)"
            ranks.failure = (
                f"tensor-parallel rank {f.rank} of {ranks.size} (pid {f.proc.pid}) {_how(code)}; "
                f"its last output: {last}"
            )
            # Said at once: on GPUs a rank blocked in a collective may never get to say it.
            print(f"lem: {ranks.failure}", file=sys.stderr, flush=True)
            _kill(ranks)  # the other ranks cannot go on without it
            if ranks.device_type == "cuda":
                _abort_nccl()
            return
        time.sleep(0.1)


def _abort_nccl() -> None:
    # Rank 0 may be blocked in a device sync behind a collective that can never finish: aborting the
    # communicators makes it return with an error (torch's API, marked experimental, NCCL only).
    try:
        from torch.distributed.distributed_c10d import _abort_process_group

        _abort_process_group()
    except Exception as exc:  # the process group's own timeout (shard.PG_TIMEOUT_S) is the backstop
        print(f"lem: could not abort the NCCL process group ({exc})", file=sys.stderr, flush=True)


def _wait_for_failure(ranks: Ranks, wait_s: float = EXPLAIN_WAIT_S) -> str | None:
    deadline = time.monotonic() + wait_s
    while ranks.failure is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return ranks.failure


def explained(ranks: Ranks, exc: BaseException) -> BaseException:
    """``exc`` (raised on rank 0) or, when a follower's death caused it, a BackendError with that reason."""
    reason = _wait_for_failure(ranks)
    return BackendError(reason) if reason is not None else exc


def generate(ranks: Ranks, model: Any, input_ids: Any, attention_mask: Any, **kwargs: Any) -> Any:
    """``model.generate`` on rank 0, the followers running the same call (see the module docstring)."""
    if ranks.failure is not None:
        raise BackendError(ranks.failure)
    rng = torch.cuda.get_rng_state(input_ids.device) if ranks.device_type == "cuda" else None
    command = pickle.dumps(
        (
            "generate",
            {
                "input_ids": input_ids.cpu(),
                "attention_mask": attention_mask.cpu(),
                "generation_config": kwargs["generation_config"],
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": rng,
            },
        )
    )
    for f in ranks.followers:
        _send(ranks, f.proc, command)
    ranks.busy = True
    try:
        result = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    except Exception as exc:
        raise explained(ranks, exc) from exc
    ranks.busy = False
    return result


def _kill(ranks: Ranks) -> None:
    for f in ranks.followers:
        if f.proc.poll() is None:
            f.proc.kill()


def close(ranks: Ranks) -> None:
    """Stop the followers (killing any still there after ``STOP_GRACE_S``) and leave the process group."""
    if ranks.closing:
        return
    ranks.closing = True
    stop = pickle.dumps(("stop", None))
    for f in ranks.followers:
        try:
            assert f.proc.stdin is not None
            f.proc.stdin.write(stop)
            f.proc.stdin.close()
        except OSError:
            pass
    # A generate left midway (Ctrl-C) has the followers waiting in a collective that will never come.
    deadline = time.monotonic() + (0.0 if ranks.busy else STOP_GRACE_S)
    for f in ranks.followers:
        try:
            f.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            f.proc.kill()
            f.proc.wait()
        f.reader.join(2.0)
    if ranks.monitor is not None:
        ranks.monitor.join(2.0)
    atexit.unregister(_kill)
    leave_group()
    for key, value in ranks.saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if ranks.saved_threads is not None:
        torch.set_num_threads(ranks.saved_threads)


def describe(ranks: Ranks) -> dict[str, Any]:
    """What ``LoadedModel.info["tensor_parallel"]`` records: size, backend and every rank's process and device."""
    rows = [{"rank": 0, "pid": os.getpid(), "device": device_for(ranks.device_type, 0)}]
    rows += [
        {"rank": f.rank, "pid": f.proc.pid, "device": device_for(ranks.device_type, f.rank)} for f in ranks.followers
    ]
    return {
        "size": ranks.size,
        "backend": ranks.backend,
        "plan": "transformers DistributedConfig(tp_plan='auto')",
        "rendezvous": f"env:// 127.0.0.1:{ranks.port}",
        "ranks": rows,
    }
