"""Starting and stopping a TensorRT-LLM ``LLM``, building a TensorRT engine, and the checks made before either.

The PyTorch runtime is ``tensorrt_llm.LLM``; the TensorRT engine flow is
``tensorrt_llm._tensorrt_engine.LLM`` (``_TrtLLM`` up to 1.2), which builds an
engine from a checkpoint with a ``BuildConfig`` (:func:`build_engine`, which
saves it) or loads a saved engine (:func:`start`). :func:`check_against_installed`
checks lem's arguments against the installed library's own classes.

The ``LLM`` (PyTorch runtime) runs its executor in worker processes (MPI or
its own IPC); requests are submitted with ``generate_async`` from the asyncio
loop of a :class:`lem.serving.EngineHandle` (its own thread), because
TensorRT-LLM binds a request's result queue to the loop it was submitted from.

The handle closes the engine: it cancels the requests in flight, calls this
backend's one shutdown, ``llm.shutdown()`` (which ends the executor and its
MPI session), then closes the loop; idempotent and registered with
``atexit``, so success, an error and Ctrl-C all leave no executor or worker
behind.

Compute capability is read through NVML (``pynvml``) when it is installed,
which does not initialise CUDA; otherwise through ``torch.cuda`` here, at load,
where the backend owns CUDA anyway.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from lem.config import ExperimentConfig
from lem.errors import BackendError
from lem.options import did_you_mean
from lem.serving import EngineHandle
from lem_backend_tensorrt import options


@attrs.define
class Engine:
    """A running ``tensorrt_llm.LLM`` and the handle that closes it (with the loop its streaming requests run on)."""

    mode: str
    llm: Any
    serving: EngineHandle


def _visible_ordinals(count: int) -> list[int]:
    """NVML indices of the first ``count`` CUDA devices (CUDA_VISIBLE_DEVICES as integers, else 0..count-1)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        try:
            return [int(v) for v in visible.split(",")][:count]
        except ValueError:
            pass  # UUIDs or MIG names: fall back to the first devices
    return list(range(count))


def compute_capabilities(count: int) -> list[tuple[str, tuple[int, int]]]:
    """(name, (major, minor)) of the devices the engine will use; NVML if importable (no CUDA init), else torch."""
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            pass  # no driver here: torch below says so in its own words
        else:
            try:
                found = []
                for index in _visible_ordinals(count):
                    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                    name = pynvml.nvmlDeviceGetName(handle)
                    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                    found.append((name.decode() if isinstance(name, bytes) else str(name), (int(major), int(minor))))
                return found
            finally:
                pynvml.nvmlShutdown()
    import torch

    if not torch.cuda.is_available():
        raise BackendError("backend = 'tensorrt': no CUDA GPU is available; TensorRT-LLM needs an NVIDIA GPU")
    return [
        (torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))  # type: ignore[misc]
        for i in range(min(count, torch.cuda.device_count()))
    ]


def check_capability(config: ExperimentConfig, devices: list[tuple[str, tuple[int, int]]]) -> None:
    """Refuse GPUs below compute capability 8.0, and fp8 below 9.0, with a clear error."""
    need_fp8 = options.uses_fp8(config)
    for name, cap in devices:
        shown = f"{name} (compute capability {cap[0]}.{cap[1]})"
        if cap < options.MIN_CAPABILITY:
            raise BackendError(
                f"backend = 'tensorrt': {shown} is below 8.0, the oldest TensorRT-LLM's PyTorch runtime supports; "
                "use an Ampere or newer GPU, or another backend"
            )
        if need_fp8 and cap < options.MIN_FP8_CAPABILITY:
            raise BackendError(
                f"tensorrt.quantization.method / kv_cache_dtype = 'fp8': {shown} has no fp8 support (needs 9.0, "
                "Hopper or newer); use int8/int4 quantization or kv_cache_dtype = 'auto'"
            )


def check_checkpoint_quantization(config: ExperimentConfig, model: str) -> bool:
    """A quantized method needs a checkpoint quantized that way (ModelOpt's hf_quant_config.json says how).

    In the engine flow a checkpoint without ``hf_quant_config.json`` is quantized while the engine is built.
    Returns whether the checkpoint is quantized already (then nothing is to be quantized at the build).
    """
    method = options.quantization_method(config)
    if method is None:
        return False
    expected = options.QUANTIZATION[method]
    path = Path(model) / "hf_quant_config.json"
    if not path.is_file():
        if options.runtime(config) == "tensorrt":
            return False
        if Path(model).is_dir():
            raise BackendError(
                f"tensorrt.quantization.method = {method!r}: {model} has no hf_quant_config.json; TensorRT-LLM's "
                "PyTorch runtime serves pre-quantized checkpoints: quantize it with NVIDIA ModelOpt first"
            )
        return True  # a hub id: TensorRT-LLM reads the quantization when it downloads the checkpoint
    algo = json.loads(path.read_text()).get("quantization", {}).get("quant_algo")
    if algo != expected:
        raise BackendError(
            f"tensorrt.quantization.method = {method!r} expects quant_algo {expected!r}, but {path} says {algo!r}; "
            "set the method the checkpoint was quantized with"
        )
    return True


def _build(args: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the nested tables of :func:`options.llm_args` into TensorRT-LLM's config classes."""
    from tensorrt_llm import llmapi

    kwargs = dict(args)
    for cls, field in {**options.NESTED, **options.ENGINE_NESTED}.items():
        value = kwargs.get(field)
        if isinstance(value, Mapping):
            if cls == "QuantConfig":  # the algorithm by name -> TensorRT-LLM's QuantAlgo
                value = {**value, "quant_algo": llmapi.QuantAlgo(value["quant_algo"])}
            kwargs[field] = getattr(llmapi, cls)(**value)
    return kwargs


def _engine_llm() -> Any:
    """The TensorRT engine flow's ``LLM`` (``_TrtLLM`` up to 1.2, exported there as ``LLM``)."""
    from tensorrt_llm._tensorrt_engine import LLM

    return LLM


def build_engine(args: Mapping[str, Any], build: Mapping[str, Any], target: Path) -> None:
    """Build an engine from the checkpoint ``args["model"]`` with ``BuildConfig(**build)``; save it to ``target``.

    TensorRT-LLM builds inside ``LLM(...)`` and starts an executor on the engine; that executor is shut down
    here, and the experiment loads the saved engine like any cached one, so its load is the same whether or
    not this run built the engine.
    """
    from tensorrt_llm.llmapi import BuildConfig

    llm = _engine_llm()(**_build(args), build_config=BuildConfig(**build))
    try:
        llm.save(str(target))
    finally:
        llm.shutdown()


def start(mode: str, args: Mapping[str, Any], engine_flow: bool = False) -> Engine:
    """Construct the ``LLM`` (model load, KV cache allocation, warm-up and CUDA-graph capture happen here).

    With ``engine_flow``, ``args["model"]`` is a built TensorRT engine and the engine flow's ``LLM`` loads it.
    """
    handle = EngineHandle("lem-tensorrt", loop=mode == "stream")
    try:
        if engine_flow:
            llm = _engine_llm()(**_build(args))
        else:
            from tensorrt_llm import LLM

            llm = LLM(**_build(args))
    except BaseException:
        handle.close()
        raise
    engine = Engine(mode, llm, handle)

    def shutdown() -> None:
        llm, engine.llm = engine.llm, None
        llm.shutdown()

    handle.shutdown = shutdown
    return engine


def close(engine: Engine) -> None:
    """Cancel the requests in flight, ``llm.shutdown()``, close the loop (safe to call twice)."""
    engine.serving.close()


def _field_names(cls: Any) -> set[str]:
    """A pydantic model's fields, or a dataclass's (``BuildConfig`` has been both)."""
    if hasattr(cls, "model_fields"):
        return set(cls.model_fields)
    import dataclasses

    return {f.name for f in dataclasses.fields(cls)}


def _trt_llm_args() -> Any:
    """``TrtLlmArgs``: in ``llmapi.llm_args`` up to 1.2, in ``_tensorrt_engine.llm_args`` in the later source."""
    try:
        from tensorrt_llm._tensorrt_engine.llm_args import TrtLlmArgs
    except ImportError:
        from tensorrt_llm.llmapi.llm_args import TrtLlmArgs
    return TrtLlmArgs


def check_against_installed(args: Mapping[str, Any], build: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`BackendError` for an argument the installed TensorRT-LLM does not have.

    ``LLM(...)`` arguments are checked against ``TorchLlmArgs`` (PyTorch runtime) or, with ``build`` (the
    engine flow), against ``TrtLlmArgs``, and ``build`` against ``BuildConfig``.
    """
    import tensorrt_llm

    if build is None:
        from tensorrt_llm.llmapi.llm_args import TorchLlmArgs

        cls, fields = "TorchLlmArgs", _field_names(TorchLlmArgs)
        ours = {field: key for key, (c, field) in options.TENSORRT_OPTIONS.items() if c == "TorchLlmArgs"}
    else:
        from tensorrt_llm.llmapi import BuildConfig

        cls, fields = "TrtLlmArgs", _field_names(_trt_llm_args())
        ours = {field: key for key, (c, field) in options.TENSORRT_OPTIONS.items() if c == "TorchLlmArgs"}
        build_fields = _field_names(BuildConfig)
        built = {field: key for key, (c, field) in options.ENGINE_OPTIONS.items() if c == "BuildConfig"}
        core_built = {field: key for key, field in options.ENGINE_CORE_OPTIONS.items()}
        for name in build:
            if name not in build_fields:
                where = (
                    f"tensorrt.{built[name]}"
                    if name in built
                    else core_built.get(name, f"tensorrt.extra_build_args.{name}")
                )
                raise BackendError(
                    f"{where}: TensorRT-LLM {tensorrt_llm.__version__} has no BuildConfig field '{name}' "
                    f"({did_you_mean(name, sorted(build_fields))}); remove the option or install a "
                    "TensorRT-LLM that accepts it"
                )
    core = {field: key for key, field in options.CORE_OPTIONS.items()}
    for name in args:
        if name not in fields:
            where = f"tensorrt.{ours[name]}" if name in ours else core.get(name, f"tensorrt.extra_runtime_args.{name}")
            raise BackendError(
                f"{where}: TensorRT-LLM {tensorrt_llm.__version__} has no {cls} argument '{name}' "
                f"({did_you_mean(name, sorted(fields))}); remove the option or install a TensorRT-LLM "
                "that accepts it"
            )
