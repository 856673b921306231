"""Fixtures for the server backend's tests: tiny models, experiment configs, and process checks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# For `vllm serve` on a CPU: a 1 GiB KV cache (unset it takes ~8 GiB), its compile cache in a temp dir,
# no hub, no usage reporting. The managed server inherits these.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="lem-vllm-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


def server_config(model: str, server: dict[str, Any], check: bool = True, **tables: Any) -> Any:
    """A ``backend = "server"`` experiment: greedy, 8 output tokens, float32, no idle baseline.

    ``check=False`` skips validation (for tests of what validation says).
    """
    from lem.configfile.loading import config_from_dict, structure

    doc: dict[str, Any] = {
        "model": model,
        "backend": "server",
        "precision": "float32",
        "generation": {"max_output_tokens": 8, "ignore_eos": True, "do_sample": False},
        "measurement": {"idle_seconds": 0, "warmup_requests": 0, "cycles": 1, "energy_meter": "none"},
        "server": server,
    }
    for key, value in tables.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    if not check:
        config, problems = structure(doc)
        assert config is not None, problems
        return config
    return config_from_dict(doc)


@pytest.fixture(scope="session")
def make_config() -> Callable[..., Any]:
    """``make_config(model, {server table}, traffic={...})``."""
    return server_config


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as a float32 GGUF file (for llama.cpp's server)."""
    from server_tiny_gguf import convert

    return convert(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf")


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` exists (zombies excluded)."""
    import psutil

    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False


@contextmanager
def served(
    make_config: Callable[..., Any],
    model: Path,
    log: Path,
    args: tuple[str, ...],
    server: dict[str, Any],
    **tables: Any,
) -> Iterator[tuple[Any, Any, Path]]:
    """``(loaded model, config, log)``: the backend loaded against a fake server run with ``args`` that logs to ``log``.

    ``server`` is the ``[server]`` table besides its ``url``.
    """
    from lem_backend_server import plugin
    from lem_backend_server.testing import running

    with running(*args, log=log) as url:
        config = make_config(str(model), {"url": url, **server}, **tables)
        loaded = plugin.load_model(backend="server", config=config)
        assert loaded is not None
        try:
            yield loaded, config, log
        finally:
            loaded.close()
