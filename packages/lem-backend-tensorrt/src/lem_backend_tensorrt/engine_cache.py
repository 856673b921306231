"""The cache of built TensorRT engines (``[tensorrt] runtime = "tensorrt"``).

An engine is specific to everything it was built from, so its cache key is a
digest of: the model (id, revision, and for a local checkpoint the names,
sizes and modification times of its files), the precision, the
``BuildConfig`` arguments, the quantization, tensor and pipeline parallel
sizes, each GPU's name and compute capability, and the TensorRT-LLM version.
Each entry is a directory ``<engine_cache_dir>/<model>-<digest[:16]>/``
holding ``engine/`` (what ``LLM.save`` wrote) and ``lem-engine.json`` (the
key's inputs, the build time, the versions).

A build writes into a temporary directory beside the entry and renames it
into place only when ``save`` and the metadata are complete, so an entry
that exists is whole: a build that crashed half-way leaves a temporary
directory that is never read (and is removed by the next build of that key,
unless the process that made it still runs: two builds of one key may run at once).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lem.config import ExperimentConfig
from lem.errors import BackendError
from lem_backend_tensorrt import options

METADATA = "lem-engine.json"
ENGINE_DIR = "engine"
#: Bump when the layout of an entry changes: older entries are then not reused.
CACHE_FORMAT = 1


@attrs.frozen
class Entry:
    """One cache entry: where it is and what its key was made of."""

    directory: Path
    digest: str
    inputs: Mapping[str, Any]

    @property
    def engine(self) -> Path:
        """The engine directory TensorRT-LLM loads."""
        return self.directory / ENGINE_DIR

    @property
    def metadata_path(self) -> Path:
        """The metadata JSON beside the engine."""
        return self.directory / METADATA


def cache_root(config: ExperimentConfig) -> Path:
    """``[tensorrt] engine_cache_dir``, else ``$LEM_CACHE_DIR/tensorrt``, else ``$XDG_CACHE_HOME/lem/tensorrt``."""
    configured = config.options_for("tensorrt").get("engine_cache_dir")
    if configured:
        return Path(str(configured)).expanduser()
    base = os.environ.get("LEM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lem"
    )
    return Path(base) / "tensorrt"


def _checkpoint(model: str) -> list[list[Any]] | None:
    """A local checkpoint's files (name, size, mtime ns): a checkpoint changed in place gets a new key."""
    path = Path(model)
    if not path.is_dir():
        return None  # a hub id: its revision names it
    return [
        [str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(path.rglob("*"))
        if f.is_file()
    ]


def key_inputs(
    config: ExperimentConfig,
    args: Mapping[str, Any],
    build: Mapping[str, Any],
    devices: Sequence[tuple[str, tuple[int, int]]],
    version: str,
) -> dict[str, Any]:
    """Everything the engine depends on, as JSON-able data (the digest is taken over this)."""
    return {
        "format": CACHE_FORMAT,
        "model": config.model,
        "revision": config.revision,
        "checkpoint": None if args.get("load_format") == "dummy" else _checkpoint(str(args["model"])),
        "random_weights": args.get("load_format") == "dummy",
        "precision": config.precision,
        "build_config": dict(build),
        "quantization": options.quantization_method(config),
        "quant_args": {k: args[k] for k in ("quant_config", "calib_config") if k in args},
        "tensor_parallel_size": args.get("tensor_parallel_size", 1),
        "pipeline_parallel_size": args.get("pipeline_parallel_size", 1),
        "gpus": [{"name": name, "compute_capability": f"{cap[0]}.{cap[1]}"} for name, cap in devices],
        "tensorrt_llm": version,
    }


def entry_for(config: ExperimentConfig, inputs: Mapping[str, Any]) -> Entry:
    """The cache entry for these key inputs (it may not exist yet)."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    name = Path(str(config.model)).name.replace(":", "-") or "model"
    return Entry(cache_root(config) / f"{name}-{digest[:16]}", digest, dict(inputs))


def read(entry: Entry) -> dict[str, Any] | None:
    """The entry's metadata if the entry is whole (metadata readable, its digest ours, the engine there), else None."""
    try:
        meta = json.loads(entry.metadata_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("digest") != entry.digest or not entry.engine.is_dir():
        return None
    return meta


def _running(pid: str) -> bool:
    """Whether the process that named a temporary build directory still runs here (another build's: keep it)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build(entry: Entry, save: Callable[[Path], None], versions: Mapping[str, str]) -> dict[str, Any]:
    """Build into a temporary directory with ``save(engine_dir)``, then move it into place; returns the metadata.

    An existing entry (``force_rebuild``) is replaced only once the new one is complete.
    """
    root = entry.directory.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"tensorrt.engine_cache_dir = {str(root)!r}: cannot create it ({exc})") from None
    for stale in root.glob(f".{entry.directory.name}.building-*"):
        if not _running(stale.name.rsplit(".building-", 1)[1].split("-")[0]):
            shutil.rmtree(stale, ignore_errors=True)  # left by a build whose process is gone
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.directory.name}.building-{os.getpid()}-", dir=root))
    try:
        t0 = time.monotonic()
        save(tmp / ENGINE_DIR)
        build_s = time.monotonic() - t0
        meta = {
            "digest": entry.digest,
            "inputs": dict(entry.inputs),
            "build_s": build_s,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": dict(versions),
        }
        (tmp / METADATA).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
        old = None
        if entry.directory.exists():
            old = root / f".{entry.directory.name}.replaced-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            entry.directory.rename(old)
        os.replace(tmp, entry.directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
