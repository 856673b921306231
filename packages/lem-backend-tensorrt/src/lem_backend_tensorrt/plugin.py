"""The ``tensorrt`` backend's hooks: load, stream, validate, presets.

TensorRT-LLM is imported only inside ``load_model`` and the functions it calls,
so ``lem --help`` and ``validate_config`` stay fast and never touch CUDA.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lem import hookimpl
from lem.config import ExperimentConfig, GenerationConfig
from lem.serving import stream as serve
from lem.types import LoadedModel, Problem, Request, TokenEvent
from lem_backend_tensorrt import engine as engines
from lem_backend_tensorrt import options, sampling, stream
from lem_backend_tensorrt.presets import PRESETS

NAME = "tensorrt"


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


@hookimpl
def load_model(backend: str, config: ExperimentConfig) -> LoadedModel | None:
    """Start a TensorRT-LLM ``LLM`` (PyTorch runtime) for the experiment."""
    if backend != NAME:
        return None
    import tensorrt_llm

    mode = config.options_for(NAME).get("mode", "stream")
    args = options.llm_args(config)
    options.check_against_installed(args)
    world = int(args["tensor_parallel_size"]) * int(args["pipeline_parallel_size"])
    engines.check_capability(config, engines.compute_capabilities(world))
    engines.check_checkpoint_quantization(config, str(args["model"]))
    t0 = time.monotonic()
    engine = engines.start(mode, args)
    try:
        info: dict[str, Any] = {
            "tensorrt_llm_version": tensorrt_llm.__version__,
            "runtime": "PyTorch (tensorrt_llm.LLM)",
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
            # No TensorRT engine is built: LLM(...) loads the checkpoint, allocates the KV cache, autotunes and
            # captures CUDA graphs. That time (and its energy) is inside the load phase.
            "engine_build": None,
            "llm_construct_s": time.monotonic() - t0,
            "random_weights": args.get("load_format") == "dummy",
        }
        return LoadedModel(
            backend=NAME,
            handle=engine,
            tokenizer=_tokenizer(engine.llm),
            devices=tuple(range(world)),
            model_config=_hf_config(str(args["model"])),
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
    assert engine.loop is not None
    return serve(engine.loop, requests, config.traffic, stream.submitter(engine.llm, sp))


@hookimpl
def validate_config(config: ExperimentConfig) -> list[Problem]:
    """Check ``[tensorrt]`` and the core options TensorRT-LLM serves differently (only when the backend is tensorrt)."""
    if config.backend != NAME:
        return []
    return options.check_options(config)


@hookimpl
def register_presets() -> Mapping[str, Mapping[str, Any]]:
    """``tensorrt-throughput``, ``tensorrt-low-latency``, ``tensorrt-fp8``."""
    return PRESETS
