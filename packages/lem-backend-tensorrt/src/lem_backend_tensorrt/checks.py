"""What is wrong with an experiment's ``[tensorrt]`` table, and with core options TensorRT-LLM serves differently.

:func:`check_options` is the backend's ``validate_config`` part: one
:class:`~lem.types.Problem` per mistake, before anything is loaded. The tables
it checks against (known keys, the keys of each runtime, the quantization
methods) are :mod:`lem_backend_tensorrt.options`'s; whether the installed
TensorRT-LLM accepts the arguments is checked at load, by
:mod:`lem_backend_tensorrt.engine`.

Nothing here imports TensorRT-LLM.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

from lem.config import ExperimentConfig
from lem.options import check, unapplied
from lem.types import Problem, error, warning
from lem_backend_tensorrt.options import ENGINE_ONLY, PYTORCH_ONLY, REFUSED, TABLE, runtime

#: ``[generation]`` keys TensorRT-LLM does not apply -> what to use instead.
NOT_APPLIED = {"min_p": "use top_p or top_k", "no_repeat_ngram_size": "use generation.repetition_penalty"}


def check_options(config: ExperimentConfig) -> list[Problem]:
    """Problems with ``[tensorrt]`` and with core options TensorRT-LLM serves differently."""
    opts = config.options_for("tensorrt")
    problems: list[Problem] = []
    rt = runtime(config)
    problems += check(TABLE, {k: v for k, v in opts.items() if k not in REFUSED})
    for key in opts:
        if key in REFUSED:
            problems.append(error(f"tensorrt.{key}", REFUSED[key], "remove it", value=opts[key]))
        elif rt == "pytorch" and key in ENGINE_ONLY:
            problems.append(
                error(
                    f"tensorrt.{key}",
                    "is an option of the TensorRT engine flow, and tensorrt.runtime = 'pytorch'",
                    "set tensorrt.runtime = 'tensorrt' to build (or load) a TensorRT engine, or remove it",
                    value=opts[key],
                )
            )
        elif rt == "tensorrt" and key in PYTORCH_ONLY:
            problems.append(
                error(
                    f"tensorrt.{key}",
                    f"is an option of the PyTorch runtime ({PYTORCH_ONLY[key]}), and tensorrt.runtime = 'tensorrt'",
                    "remove it, or use tensorrt.runtime = 'pytorch'",
                    value=opts[key],
                )
            )
    problems += _check_engine_flow(config, rt)
    mode = opts.get("mode", "stream")
    if mode == "offline" and config.traffic.mode != "offline":
        problems.append(
            error(
                "tensorrt.mode",
                f"'offline' (LLM.generate) submits every request at once and cannot follow "
                f"traffic.mode = '{config.traffic.mode}'",
                "use tensorrt.mode = 'stream', or traffic.mode = 'offline'",
                value=mode,
            )
        )
    problems += _check_quantization(config)
    if ("draft_model" in opts) != ("num_draft_tokens" in opts):
        problems.append(
            error("tensorrt.draft_model", "draft_model and num_draft_tokens go together (DraftTargetDecodingConfig)")
        )
    g = config.generation
    problems += unapplied(g, NOT_APPLIED, "the TensorRT-LLM backend")
    if g.num_beams > 1 and mode != "offline":
        problems.append(
            error(
                "generation.num_beams",
                "beam search rewrites its beams at every step, so it has no per-token stream",
                "set tensorrt.mode = 'offline' (and traffic.mode = 'offline'), or num_beams = 1",
                value=g.num_beams,
            )
        )
    if config.adapter:
        problems.append(
            error(
                "adapter",
                "LoRA adapters are not served by lem's TensorRT-LLM backend",
                "merge the adapter before building (peft merge_and_unload), then point model at the merged checkpoint",
                value=config.adapter,
            )
        )
    if config.batching.batch_size != 1:
        used = "is ignored: tensorrt.max_batch_size is set" if "max_batch_size" in opts else "becomes max_batch_size"
        problems.append(
            warning(
                "batching.batch_size",
                f"{used}; TensorRT-LLM batches in flight, so this only caps the requests per step",
                "set tensorrt.max_batch_size directly",
                value=config.batching.batch_size,
            )
        )
    if importlib.util.find_spec("vllm") is not None:
        problems.append(
            warning(
                "backend",
                "vLLM is installed in the same environment as TensorRT-LLM; they pin different torch and CUDA "
                "libraries and break each other",
                "give TensorRT-LLM its own environment and run it with lem run --python tensorrt=/path/to/python",
                value="tensorrt",
            )
        )
    return problems


def _check_engine_flow(config: ExperimentConfig, rt: str) -> list[Problem]:
    opts = config.options_for("tensorrt")
    problems: list[Problem] = []
    if "engine_path" in opts and isinstance(opts["engine_path"], str):
        if not os.path.isdir(os.path.expanduser(opts["engine_path"])):
            problems.append(
                error(
                    "tensorrt.engine_path",
                    "is not a directory (a TensorRT-LLM engine saved with LLM.save or trtllm-build --output_dir)",
                    "point it at the engine directory, or remove it to build the engine from model",
                    value=opts["engine_path"],
                )
            )
        for key in ("force_rebuild", "extra_build_args", "strongly_typed", "engine_cache_dir"):
            if key in opts:
                problems.append(
                    warning(
                        f"tensorrt.{key}",
                        "has no effect with tensorrt.engine_path: that engine is loaded as it is, not built",
                        "remove it, or remove engine_path to build (and cache) the engine",
                        value=opts[key],
                    )
                )
    return problems


def _check_quantization(config: ExperimentConfig) -> list[Problem]:
    problems: list[Problem] = []
    if config.quantization.method.startswith("bnb"):
        problems.append(
            error(
                "quantization.method",
                "BitsAndBytes is not supported by TensorRT-LLM",
                "use tensorrt.quantization.method = 'int8_weight_only' or 'int4_awq' with a ModelOpt checkpoint",
                value=config.quantization.method,
            )
        )
    table = config.options_for("tensorrt").get("quantization")
    if not isinstance(table, Mapping):
        return problems
    method = table.get("method", "none")
    calibration = table.get("calibration")
    if calibration is not None:
        if isinstance(calibration, Mapping):
            if runtime(config) != "tensorrt":
                problems.append(
                    error(
                        "tensorrt.quantization.calibration",
                        "TensorRT-LLM's PyTorch runtime does not calibrate: it serves checkpoints quantized beforehand",
                        "set tensorrt.runtime = 'tensorrt' (the engine is quantized while it is built), or quantize "
                        "and calibrate with NVIDIA ModelOpt (hf_ptq.py) and point model at its output",
                    )
                )
            elif "split" in calibration:
                problems.append(
                    error(
                        "tensorrt.quantization.calibration.split",
                        "TensorRT-LLM's CalibConfig takes no dataset split (calib_dataset names the dataset only)",
                        "remove it",
                        value=calibration["split"],
                    )
                )
            if method in (None, "none"):
                problems.append(
                    error("tensorrt.quantization.calibration", "calibration needs tensorrt.quantization.method")
                )
    return problems
