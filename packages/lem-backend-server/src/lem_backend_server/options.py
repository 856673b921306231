"""The ``[server]`` table: what each key means, and the checks ``validate_config`` runs on it.

Managed mode: ``engine`` (lem builds the command from :mod:`lem_backend_server.engines`)
or ``command`` (your own argument list); lem starts and stops the server.
External mode: ``url`` (a server lem does not manage; energy is of this machine's GPUs only).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

from lem.config import ExperimentConfig
from lem.types import Problem, error, warning
from lem_backend_server.client import SAMPLING
from lem_backend_server.engines import ENGINES

NAME = "server"

#: ``[server]`` key -> what it does (every key is read by :mod:`lem_backend_server.plugin`).
OPTIONS: dict[str, str] = {
    "engine": "vllm | sglang | trtllm | llamacpp | tgi: the launch command, health and version endpoints, "
    "request fields (with url: only the request fields)",
    "command": "argument list run without a shell instead of the engine's; {host}, {port}, {model} are filled in",
    "args": "extra arguments appended to the engine's command",
    "url": "external mode: base URL of a running server (http://host:port); lem starts nothing",
    "python": "interpreter for engines run as python -m (vllm, sglang, llamacpp); default: lem's own",
    "executable": "program for engines run as a binary (trtllm-serve, text-generation-launcher)",
    "host": "address the managed server binds to (default 127.0.0.1)",
    "port": "port of the managed server (default 0: a free port)",
    "env": "table of environment variables for the managed server",
    "health_path": "health endpoint (default: the engine's, else /health)",
    "startup_timeout_s": "seconds to wait for the health endpoint (default 900)",
    "shutdown_grace_s": "seconds between SIGTERM and SIGKILL (default 15)",
    "request_timeout_s": "a request unfinished this long after it was sent fails as timed out (default 600)",
    "api_key_env": "name of the environment variable holding the API key (sent as a Bearer token, never stored)",
    "model_name": "the request's model field (default: the first id of GET /v1/models)",
    "tokenizer": "Hugging Face tokenizer (path or id) lem uses for prompts (default: model)",
    "prompt_format": "auto | token_ids | text (auto: token ids where the engine accepts them)",
    "log_file": "where the managed server's output goes (default: a new temporary directory)",
}

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "startup_timeout_s": 900.0,
    "shutdown_grace_s": 15.0,
    "request_timeout_s": 600.0,
    "prompt_format": "auto",
}

EXTERNAL_ENERGY = (
    "external server: lem measures the energy of this machine's GPUs only; a server on another machine (or on "
    "GPUs not metered here) is not in the energy figures"
)

_TYPES: dict[str, tuple[type, ...]] = {
    "engine": (str,),
    "command": (list,),
    "args": (list,),
    "url": (str,),
    "python": (str,),
    "executable": (str,),
    "host": (str,),
    "port": (int,),
    "env": (dict,),
    "health_path": (str,),
    "startup_timeout_s": (int, float),
    "shutdown_grace_s": (int, float),
    "request_timeout_s": (int, float),
    "api_key_env": (str,),
    "model_name": (str,),
    "tokenizer": (str,),
    "prompt_format": (str,),
    "log_file": (str,),
}


def get(config: ExperimentConfig, key: str) -> Any:
    """The ``[server]`` value of ``key``, or its default."""
    return config.options_for(NAME).get(key, DEFAULTS.get(key))


def _non_default(config: ExperimentConfig) -> dict[str, Any]:
    g = config.generation
    return {
        "top_k": g.top_k != 0,
        "min_p": g.min_p != 0.0,
        "repetition_penalty": g.repetition_penalty != 1.0,
        "min_output_tokens": g.min_output_tokens != 0,
        "ignore_eos": g.ignore_eos,
    }


def check_options(config: ExperimentConfig) -> list[Problem]:
    """Problems with ``[server]`` and with settings the chosen engine cannot carry."""
    opts: Mapping[str, Any] = config.options_for(NAME)
    problems: list[Problem] = []
    for key, value in opts.items():
        if key not in OPTIONS:
            close = difflib.get_close_matches(key, list(OPTIONS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "known keys: " + ", ".join(OPTIONS)
            problems.append(error(f"server.{key}", "unknown key", hint))
        elif not isinstance(value, _TYPES[key]) or (isinstance(value, bool) and bool not in _TYPES[key]):
            kinds = " or ".join(t.__name__ for t in _TYPES[key])
            problems.append(error(f"server.{key}", f"must be a {kinds}", value=value))
    if problems:
        return problems
    engine, command, url = opts.get("engine"), opts.get("command"), opts.get("url")
    if engine is not None and engine not in ENGINES:
        problems.append(error("server.engine", "unknown engine", "one of " + ", ".join(ENGINES), value=engine))
    if url is not None and command is not None:
        problems.append(error("server.url", "url (external) and command (managed) exclude each other", value=url))
    if url is None and command is None and engine is None:
        problems.append(
            error(
                "server",
                "says neither which engine to start nor where a server runs",
                "set server.engine (e.g. 'vllm'), server.command, or server.url",
            )
        )
    if url is not None and not str(url).startswith(("http://", "https://")):
        problems.append(error("server.url", "must start with http:// or https://", value=url))
    if command is not None and (not command or not all(isinstance(a, str) for a in command)):
        problems.append(error("server.command", "must be a non-empty list of strings", value=command))
    if opts.get("args") is not None and not all(isinstance(a, str) for a in opts["args"]):
        problems.append(error("server.args", "must be a list of strings", value=opts["args"]))
    if opts.get("prompt_format", "auto") not in ("auto", "token_ids", "text"):
        problems.append(error("server.prompt_format", "must be auto, token_ids or text", value=opts["prompt_format"]))
    for key in ("startup_timeout_s", "request_timeout_s"):
        if key in opts and opts[key] <= 0:
            problems.append(error(f"server.{key}", "must be > 0", value=opts[key]))
    env = opts.get("api_key_env")
    if env is not None and env not in os.environ:
        problems.append(
            warning("server.api_key_env", f"environment variable {env} is not set: no API key is sent", value=env)
        )
    host = opts.get("host", "127.0.0.1")
    if url is None and host not in ("127.0.0.1", "localhost", "::1"):
        problems.append(warning("server.host", "the managed server listens beyond this machine", value=host))
    if url is not None:
        problems.append(warning("server.url", EXTERNAL_ENERGY, value=url))
    if str(config.model).endswith(".gguf") and not opts.get("tokenizer"):
        problems.append(
            error(
                "server.tokenizer",
                "is needed with a GGUF model: lem tokenizes prompts with a Hugging Face tokenizer",
                "set server.tokenizer to the original model's directory or hub id",
            )
        )
    if engine in ENGINES:
        problems += _engine_problems(config, engine, managed=url is None and command is None)
    if config.generation.num_beams > 1:
        problems.append(
            error(
                "generation.num_beams",
                "beam search has no token stream over the completions API",
                "set num_beams = 1",
                value=config.generation.num_beams,
            )
        )
    return problems


def _engine_problems(config: ExperimentConfig, engine: str, *, managed: bool) -> list[Problem]:
    spec = ENGINES[engine]
    out: list[Problem] = []
    for key, used in _non_default(config).items():
        if used and SAMPLING[key][engine] is None:
            out.append(
                warning(
                    f"generation.{key}",
                    f"{engine}'s completions API has no such field: it is not sent",
                    value=getattr(config.generation, key),
                )
            )
    if not managed:
        return out
    if config.precision not in spec.precision:
        out.append(
            error(
                "precision",
                f"{engine} cannot serve this precision",
                "use one of " + ", ".join(spec.precision),
                value=config.precision,
            )
        )
    elif spec.flags["precision"] is None and config.precision != "bfloat16":
        out.append(
            warning(
                "precision",
                f"{engine} has no precision flag: the checkpoint's own dtype is served",
                value=config.precision,
            )
        )
    sh = config.sharding
    for key, size in (("tensor_parallel", sh.tensor_parallel_size), ("pipeline_parallel", sh.pipeline_parallel_size)):
        if size > 1 and spec.flags[key] is None:
            out.append(error(f"sharding.{key}_size", f"{engine} has no such parallelism", value=size))
    if engine == "llamacpp" and sh.tensor_parallel_size > 1 and sh.pipeline_parallel_size > 1:
        out.append(error("sharding", "llama.cpp splits by rows or by layers, not both", "set one size to 1"))
    q = config.quantization.method
    if q != "none" and q not in spec.quantization:
        out.append(error("quantization.method", f"{engine} has no launch flag for it", value=q))
    if config.load_format == "random" and spec.flags["random_weights"] is None:
        out.append(error("load_format", f"{engine} cannot load random weights", value="random"))
    return out
