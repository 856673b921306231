"""The ``tensorrt`` backend's hooks: load, stream, validate, presets.

TensorRT-LLM is imported only inside ``load_model`` and the functions it calls,
so ``lem --help`` and ``validate_config`` stay fast and never touch CUDA.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lem import accelerators, hookimpl
from lem.config import ExperimentConfig, GenerationConfig
from lem.serving import stream as serve
from lem.types import LoadedModel, Problem, Request, TokenEvent
from lem_backend_tensorrt import __version__, checks, engine_cache, options, sampling, stream
from lem_backend_tensorrt import engine as engines
from lem_backend_tensorrt.presets import PRESETS

NAME = "tensorrt"
TABLES = options.TABLES  # lem plugins --options tensorrt


def _hf_config(model: str) -> dict[str, Any]:
    try:
        from transformers import AutoConfig

        return dict(AutoConfig.from_pretrained(model).to_dict())
    except Exception:  # a hub id not in the local cache: FLOPs are then not computed, nothing else depends on it
        return {}


def _tokenizer(llm: Any) -> Any:
    # TensorRT-LLM wraps the Hugging Face tokenizer (TransformersTokenizer.tokenizer).
    tok = getattr(llm, "tokenizer", None)
    return getattr(tok, "tokenizer", tok)


def _no_phases(name: str) -> contextlib.AbstractContextManager[None]:
    """Stands in for the core's ``phases`` when a caller passes none (a direct hook call)."""
    return contextlib.nullcontext()


def _engine(
    config: ExperimentConfig,
    args: dict[str, Any],
    devices: list[tuple[str, tuple[int, int]]],
    phases: Callable[[str], contextlib.AbstractContextManager[None]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine to load (``runtime = "tensorrt"``): ``args`` pointing at it, and what ``info["engine"]`` records.

    A given ``engine_path`` is loaded as it is. Otherwise the cache is looked up and, on a miss or with
    ``force_rebuild``, the engine is built in the load's ``build`` phase (its own time and energy).
    """
    import tensorrt_llm

    opts = config.options_for(NAME)
    build = {} if "engine_path" in opts else options.build_config_args(config)
    engines.check_against_installed(args, build)
    if "engine_path" in opts:
        path = str(args["model"])
        engine_args = dict(args)
        if not (Path(path) / "tokenizer_config.json").is_file():
            engine_args.setdefault("tokenizer", options.model_path(config)[0])
        return engine_args, {"source": "engine_path", "path": path, "build": None, "cache": None}
    version = str(tensorrt_llm.__version__)
    entry = engine_cache.entry_for(config, engine_cache.key_inputs(config, args, build, devices, version))
    meta = None if opts.get("force_rebuild") else engine_cache.read(entry)
    cache = "hit"
    if meta is None:
        cache = "rebuilt" if opts.get("force_rebuild") else "miss"
        with phases("build"):
            meta = engine_cache.build(
                entry,
                lambda target: engines.build_engine(args, build, target),
                {"tensorrt_llm": version, "lem_backend_tensorrt": __version__},
            )
    # The saved engine is the model now; the checkpoint it was built from still provides the tokenizer.
    engine_args = {**args, "model": str(entry.engine), "tokenizer": str(args["model"])}
    engine_args.pop("load_format", None)  # the weights are in the engine
    info = {
        "source": "cache",
        "path": str(entry.engine),
        "cache": cache,
        "digest": entry.digest,
        "build_config": build,
        "build": {"build_s": meta.get("build_s"), "built_at": meta.get("built_at"), "versions": meta.get("versions")},
        "metadata": str(entry.metadata_path),
    }
    return engine_args, info


@hookimpl
def load_model(
    backend: str,
    config: ExperimentConfig,
    phases: Callable[[str], contextlib.AbstractContextManager[None]] | None = None,
) -> LoadedModel | None:
    """Start a TensorRT-LLM ``LLM``: the PyTorch runtime, or a built TensorRT engine (``runtime = "tensorrt"``)."""
    if backend != NAME:
        return None
    import tensorrt_llm

    mode = config.options_for(NAME).get("mode", "stream")
    engine_flow = options.runtime(config) == "tensorrt"
    args = options.llm_args(config)
    if not engine_flow:
        engines.check_against_installed(args)
    world = int(args["tensor_parallel_size"]) * int(args["pipeline_parallel_size"])
    devices = engines.compute_capabilities(world)
    engines.check_capability(config, devices)
    hf_model, random_weights = options.model_path(config)
    if engines.check_checkpoint_quantization(config, hf_model):
        # Quantized beforehand: TensorRT-LLM reads the checkpoint's own quantization; nothing to quantize.
        args.pop("quant_config", None)
        args.pop("calib_config", None)
    engine_info: dict[str, Any] | None = None
    if engine_flow:
        args, engine_info = _engine(config, args, devices, phases or _no_phases)
    t0 = time.monotonic()
    engine = engines.start(mode, args, engine_flow=engine_flow)
    try:
        info: dict[str, Any] = {
            "tensorrt_llm_version": tensorrt_llm.__version__,
            "runtime": (
                "TensorRT engine (tensorrt_llm._tensorrt_engine.LLM)" if engine_flow else "PyTorch (tensorrt_llm.LLM)"
            ),
            "mode": mode,
            "engine": "generate_async(streaming=True)" if mode == "stream" else "LLM.generate",
            "timing": (
                "per token: one event per streamed output (CompletionOutput.token_ids_diff), stamped on arrival "
                "(time.monotonic_ns)"
                if mode == "stream"
                else "per request: submission and completion only; TTFT and ITL are not observed"
            ),
            "llm_args": {
                k: (v if isinstance(v, (int, float, bool, str, type(None))) else repr(v)) for k, v in args.items()
            },
            # The PyTorch runtime builds no engine: LLM(...) loads the checkpoint, allocates the KV cache,
            # autotunes and captures CUDA graphs, all inside the load. The engine flow's build, when this run
            # built one, is the load's "build" phase (setup.json load.phases.build).
            "engine_build": engine_info,
            "llm_construct_s": time.monotonic() - t0,
            "random_weights": random_weights,
            # The GPUs' NVML names, for the peaks the roofline figures use (lem.figures.hardware).
            "hardware": accelerators.describe(tuple(range(world))),
        }
        return LoadedModel(
            backend=NAME,
            handle=engine,
            tokenizer=_tokenizer(engine.llm),
            devices=tuple(range(world)),
            model_config=_hf_config(hf_model),
            info=info,
            # Outputs arrive after the executor finished the step that made them: the window closes after it.
            synchronize=lambda: None,
            close=lambda: engines.close(engine),
        )
    except BaseException:
        engines.close(engine)
        raise


@hookimpl
def generate_stream(
    model: LoadedModel, requests: Sequence[Request], params: GenerationConfig, config: ExperimentConfig
) -> Iterator[TokenEvent] | None:
    """Serve the requests: per-token events when streaming, per-request offline."""
    if model.backend != NAME:
        return None
    engine: engines.Engine = model.handle
    sp = sampling.sampling_params(params, config)
    if engine.mode == "offline":
        return stream.offline(engine.llm, requests, sp)
    assert engine.serving.loop is not None
    return serve(engine.serving.loop, requests, config.traffic, stream.submitter(engine.llm, sp))


@hookimpl
def validate_config(config: ExperimentConfig) -> list[Problem]:
    """Check ``[tensorrt]`` and the core options TensorRT-LLM serves differently (only when the backend is tensorrt)."""
    if config.backend != NAME:
        return []
    return checks.check_options(config)


@hookimpl
def register_presets() -> Mapping[str, Mapping[str, Any]]:
    """``tensorrt-throughput``, ``tensorrt-low-latency``, ``tensorrt-fp8``."""
    return PRESETS
