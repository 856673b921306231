"""The ``[server]`` table: what each key means, and the checks ``validate_config`` runs on it.

Managed mode: ``engine`` (lem builds the command from :mod:`lem_backend_server.engines`)
or ``command`` (your own argument list); lem starts and stops the server.
External mode: ``url`` (a server lem does not manage; energy is of this machine's GPUs only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from lem.config import ExperimentConfig
from lem.options import Option, Table, check, unapplied
from lem.types import Problem, error, warning
from lem_backend_server.client import SAMPLING
from lem_backend_server.engines import ENGINES

NAME = "server"

#: The longest timeout: finite and positive, so a server that never answers is not waited for forever.
_WEEK_S = 7 * 24 * 3600

#: The most client processes: far more than a machine's cores would make them compete for CPU.
MAX_CLIENT_PROCESSES = 64

#: The one visible table. Every key is read by :mod:`lem_backend_server.launch`; none reaches a library call:
#: the server's command line (:mod:`lem_backend_server.engines`) or its HTTP requests carry them.
TABLE = Table(
    NAME,
    (
        Option(
            "engine",
            str,
            "the launch command, health and version endpoints, request fields (with url: only the request fields)",
            choices=tuple(ENGINES),
        ),
        Option(
            "command",
            list[str],
            "argument list run without a shell instead of the engine's; {host}, {port}, {model} are filled in",
        ),
        Option("args", list[str], "extra arguments appended to the engine's command"),
        Option("url", str, "external mode: base URL of a running server (http://host:port); lem starts nothing"),
        Option("python", str, "interpreter for engines run as python -m (vllm, sglang, llamacpp); default: lem's own"),
        Option("executable", str, "program for engines run as a binary (trtllm-serve, text-generation-launcher)"),
        Option("host", str, "address the managed server binds to", default="127.0.0.1"),
        Option("port", int, "port of the managed server (0: a free port)", default=0, ge=0, le=65535),
        Option("env", dict[str, str], "environment variables for the managed server"),
        Option("health_path", str, "health endpoint (default: the engine's, else /health)", pattern="/.*"),
        Option("startup_timeout_s", float, "seconds to wait for the health endpoint", default=900.0, gt=0, le=_WEEK_S),
        Option("shutdown_grace_s", float, "seconds between SIGTERM and SIGKILL", default=15.0, ge=0, le=3600),
        Option(
            "request_timeout_s",
            float,
            "a request unfinished this long after it was sent fails as timed out",
            default=600.0,
            gt=0,
            le=_WEEK_S,
        ),
        Option(
            "api_key_env",
            str,
            "name of the environment variable holding the API key (sent as a Bearer token, never stored)",
        ),
        Option("model_name", str, "the request's model field (default: the first id of GET /v1/models)"),
        Option("tokenizer", str, "Hugging Face tokenizer (path or id) lem uses for prompts (default: model)"),
        Option(
            "prompt_format",
            str,
            "auto: token ids where the engine accepts them",
            default="auto",
            choices=("auto", "token_ids", "text"),
        ),
        Option("log_file", str, "where the managed server's output goes (default: a new temporary directory)"),
        Option(
            "client_processes",
            int,
            "client processes that share each cycle's requests (each its own event loop: past one core)",
            default=1,
            ge=1,
            le=MAX_CLIENT_PROCESSES,
        ),
    ),
    doc="an OpenAI-compatible server lem starts (engine, command) or reaches (url)",
)
TABLES = (TABLE,)
DEFAULTS: dict[str, Any] = TABLE.defaults()

EXTERNAL_ENERGY = (
    "external server: lem measures the energy of this machine's GPUs only; a server on another machine (or on "
    "GPUs not metered here) is not in the energy figures"
)


def get(config: ExperimentConfig, key: str) -> Any:
    """The ``[server]`` value of ``key``, or its default."""
    return config.options_for(NAME).get(key, DEFAULTS.get(key))


def _url_problems(url: str) -> list[Problem]:
    """What is wrong with an external server's base URL (the client appends ``/v1/...`` and the health path)."""
    fix = "give the server's base URL, e.g. http://127.0.0.1:8000"
    if not url.startswith(("http://", "https://")):
        return [error("server.url", "must start with http:// or https://", fix, value=url)]
    if any(c.isspace() or not c.isprintable() for c in url):
        return [error("server.url", "must not contain spaces or control characters", fix, value=url)]
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number in [0, 65535]
    except ValueError as exc:
        return [error("server.url", f"is not a valid URL ({exc})", fix, value=url)]
    if not parts.hostname:
        return [error("server.url", "names no host", fix, value=url)]
    if port == 0:
        return [error("server.url", "port 0 is not a port a server listens on", fix, value=url)]
    if parts.query or parts.fragment:
        return [
            error("server.url", "must not have a query or fragment: lem appends /v1/completions to it", fix, value=url)
        ]
    return []


def check_options(config: ExperimentConfig) -> list[Problem]:
    """Problems with ``[server]`` and with settings the chosen engine cannot carry."""
    opts: Mapping[str, Any] = config.options_for(NAME)
    problems = check(TABLE, opts)
    if problems:
        return problems
    engine, command, url = opts.get("engine"), opts.get("command"), opts.get("url")
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
    if url is not None:
        problems += _url_problems(str(url))
    if command is not None and not command:
        problems.append(error("server.command", "must be a non-empty list of strings", value=command))
    env = opts.get("api_key_env")
    if env is not None and env not in os.environ:
        problems.append(
            warning("server.api_key_env", f"environment variable {env} is not set: no API key is sent", value=env)
        )
    host = opts.get("host", "127.0.0.1")
    if not host.strip() or any(c.isspace() for c in host):
        problems.append(
            error(
                "server.host",
                "must be an address to listen on, without spaces",
                "leave it out for 127.0.0.1, or give e.g. '0.0.0.0'",
                value=host,
            )
        )
        return problems
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
    # [generation] keys this engine's completions API has no field for: not sent.
    not_sent = {key: "" for key, fields in SAMPLING.items() if fields[engine] is None}
    out: list[Problem] = unapplied(config.generation, not_sent, f"{engine}'s completions API")
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
