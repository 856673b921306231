"""Hugging Face Hub models on a machine without network: found out up front, in seconds.

Without this check a Hub id that is not in the local cache fails only when the
worker loads it, after the Hub client's retries (~50 s). :func:`check_hub_models`
runs before anything starts: a bounded TCP probe of the Hub; where it does not
answer, a model missing from the cache is one line naming ``model``, and a cached
one loads with ``HF_HUB_OFFLINE=1`` (the workers inherit it) instead of retrying.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from lem import architectures
from lem.configfile.loading import Experiment
from lem.errors import BackendError
from lem.processes import listening

#: Seconds the probe of the Hub waits for a TCP connection.
HUB_PROBE_S = 3.0


def hub_id(model: str) -> bool:
    """Whether ``model`` names a Hub repository (``org/name`` or ``name``), not a built-in or a local path."""
    if architectures.is_builtin(model) or os.path.exists(os.path.expanduser(model)):
        return False
    return not model.startswith(("/", "./", "../", "~", ".\\")) and model.count("/") <= 1 and bool(model.strip())


def hub_cache() -> Path:
    """The Hub cache directory, as ``huggingface_hub`` finds it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached(model: str) -> bool:
    """Whether a snapshot of ``model`` is in the local Hub cache."""
    snapshots = hub_cache() / ("models--" + model.replace("/", "--")) / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def hub_reachable(timeout_s: float = HUB_PROBE_S) -> bool:
    """A bounded probe: does the Hub (``HF_ENDPOINT``, default huggingface.co) accept a TCP connection?"""
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    return listening(url.hostname or "huggingface.co", port, timeout_s)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_hub_models(experiments: Sequence[Experiment]) -> None:
    """Stop before anything starts if a Hub model is neither cached nor reachable (one line naming ``model``).

    Under ``HF_HUB_OFFLINE`` nothing is probed (the Hub client fails at once itself).
    """
    wanted = sorted({v for e in experiments for v in (e.config.model, e.config.adapter) if v and hub_id(v)})
    if not wanted or _offline():
        return
    if hub_reachable():
        return
    missing = [m for m in wanted if not cached(m)]
    if missing:
        key = "model" if any(missing[0] == e.config.model for e in experiments) else "adapter"
        raise BackendError(
            f"{key} = {missing[0]!r}: not in the local Hugging Face cache ({hub_cache()}) and the Hub cannot be"
            f" reached (no connection within {HUB_PROBE_S:g} s); download it where there is network, or give a"
            " local path"
        )
    os.environ["HF_HUB_OFFLINE"] = "1"  # all cached: load from the cache, not after the client's retries
