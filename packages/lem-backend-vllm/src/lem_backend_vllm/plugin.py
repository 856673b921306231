"""The ``vllm`` backend's hooks: load, stream, validate, presets.

vLLM is imported only inside ``load_model`` and the functions it calls, so
``lem --help`` and ``validate_config`` stay fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lem import accelerators, hookimpl
from lem.config import ExperimentConfig, GenerationConfig
from lem.types import LoadedModel, Problem, Request, TokenEvent
from lem_backend_vllm import engine as engines
from lem_backend_vllm import options, sampling, stream
from lem_backend_vllm.presets import PRESETS

NAME = "vllm"
TABLES = options.TABLES  # lem plugins --options vllm


def _tokenizer(llm: Any, mode: str) -> Any:
    # vLLM's tokenizer wrapper is a Hugging Face tokenizer (or proxies to one).
    getter = getattr(llm, "get_tokenizer", None)
    if mode == "offline" and getter is not None:
        return getter()
    tok = getattr(llm, "tokenizer", None)
    return getattr(tok, "tokenizer", tok)


def _facts(engine: engines.Engine) -> tuple[Any, dict[str, Any]]:
    """The engine's tokenizer and the model's Hugging Face config.

    A separate function so that ``load_model``'s frame holds no reference to the vLLM engine: importing
    vLLM keeps the importing stack's frames alive, and ``close()`` must be able to free the engine.
    """
    llm = engine.engine
    model_config = llm.llm_engine.model_config if engine.mode == "offline" else llm.model_config
    return _tokenizer(llm, engine.mode), model_config.hf_config.to_dict()


def _effective(engine: engines.Engine) -> dict[str, Any]:
    """What the engine resolved (``options.EFFECTIVE_CONFIG``); its own function for the reason given in ``_facts``."""
    llm = engine.engine
    return options.effective_config(llm.llm_engine.vllm_config if engine.mode == "offline" else llm.vllm_config)


def _devices(count: int) -> tuple[int, ...]:
    from vllm.platforms import current_platform

    # The engine processes own CUDA; in this process we only name the ordinals they use.
    if current_platform.is_cuda_alike():
        return tuple(range(count))
    return ()


def _hardware(devices: tuple[int, ...]) -> dict[str, Any]:
    """``info["hardware"]``: the GPUs' NVML names (read through NVML: no CUDA context in this process)."""
    from vllm.platforms import current_platform

    where = getattr(current_platform, "device_type", "") or "a platform lem cannot name"
    return accelerators.describe(devices, none_reason=f"vLLM runs on {where}, not on a CUDA GPU lem can name")


def _lora_chooser(config: ExperimentConfig) -> stream.LoraFor:
    adapters = options.lora_adapters(config)
    if not adapters:
        return lambda req: None
    from vllm.lora.request import LoRARequest

    loras = [LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters)]
    # Several adapters: requests use them round-robin, so every adapter is exercised in one batch.
    return lambda req: loras[req.id % len(loras)]


@hookimpl
def load_model(backend: str, config: ExperimentConfig) -> LoadedModel | None:
    """Start a vLLM engine for the experiment (AsyncLLM when streaming, LLM offline)."""
    if backend != NAME:
        return None
    import vllm

    mode = config.options_for(NAME).get("mode", "stream")
    args = options.engine_args(config)
    if mode == "offline":
        # LLM turns stats off by default, and with them the per-request first/last token timestamps
        # (RequestOutput.metrics) that offline TTFT comes from; [vllm.extra] may still turn them off.
        args.setdefault("disable_log_stats", False)
    options.check_against_vllm(args)
    engine = engines.start(mode, args)
    try:
        tokenizer, hf_config = _facts(engine)
        info: dict[str, Any] = {
            "vllm_version": vllm.__version__,
            "mode": mode,
            "engine": "LLM.generate" if mode == "offline" else "AsyncLLM (delta outputs)",
            "timing": (
                "per token: one event per vLLM delta output, stamped on arrival (time.monotonic_ns)"
                if mode == "stream"
                else "per request: submission, vLLM's own first-token and last-token timestamps "
                "(RequestOutput.metrics) where reported, else completion only; ITL between first and last "
                "token is not observed"
            ),
            # What lem asked for, and what the engine made of it (users compare the latter).
            "engine_args": {k: (str(v) if not isinstance(v, (int, float, bool, str)) else v) for k, v in args.items()},
            "effective_config": _effective(engine),
            "random_weights": args.get("load_format") == "dummy",
        }
        # Pipeline stages occupy GPUs too: the engine uses tensor x pipeline parallel devices.
        devices = _devices(config.sharding.tensor_parallel_size * config.sharding.pipeline_parallel_size)
        # The accelerator's name, for the peaks the roofline figures are measured against (lem.figures.hardware).
        info["hardware"] = _hardware(devices)
        return LoadedModel(
            backend=NAME,
            handle=engine,
            tokenizer=tokenizer,
            devices=devices,
            model_config=hf_config,
            info=info,
            # Outputs arrive only after the engine finished the work, so the window closes after it.
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
    """Serve the requests on the engine: per-token events when streaming, per-request offline."""
    if model.backend != NAME:
        return None
    engine: engines.Engine = model.handle
    lora_for = _lora_chooser(config)
    if engine.mode == "offline":
        if params.num_beams > 1:
            return stream.beam_search(engine, requests, sampling.beam_search_params(params))
        return stream.offline(engine, requests, sampling.sampling_params(params, config, stream=False), lora_for)
    sp = sampling.sampling_params(params, config, stream=True)
    return stream.stream(engine, requests, sp, config.traffic, lora_for)


@hookimpl
def validate_config(config: ExperimentConfig) -> list[Problem]:
    """Check ``[vllm]`` and the core options vLLM serves differently (only when the backend is vllm)."""
    if config.backend != NAME:
        return []
    return options.check_options(config)


@hookimpl
def register_presets() -> Mapping[str, Mapping[str, Any]]:
    """``vllm-throughput``, ``vllm-speculative``, ``vllm-memory-efficient``, ``vllm-low-latency``."""
    return PRESETS


# vLLM reads these at import; quiet, offline-friendly defaults unless the user set them.
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
