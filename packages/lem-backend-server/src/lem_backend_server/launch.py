"""One experiment's server: start it (managed) or reach it (external), serve cycles on it, close it.

:func:`open_server` runs inside ``load_model``, so the runner's load phase
(its time and energy) covers the server's start; the server's own start
time, spawn and health-wait seconds go into ``LoadedModel.info`` as well.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lem import architectures
from lem.config import ExperimentConfig, GenerationConfig
from lem.errors import BackendError
from lem.processes import free_port, listening
from lem.serving import EngineHandle, stream
from lem.types import Request, TokenEvent
from lem_backend_server import client, fanout, hardware, options, process
from lem_backend_server.engines import ENGINES, Engine, launch_command

TIMING = "per streamed chunk: one event per chunk of /v1/completions (stream=true), stamped on arrival at lem's client"
COUNTS = (
    "per chunk from the chunk's token_ids, else its logprobs tokens, else 1 per chunk with text; the request's last "
    "event adds what the server's usage.completion_tokens (stream_options.include_usage) counted beyond that"
)


#: Seconds to wait, when the server stops answering mid-cycle, for its process to exit (to say how it ended).
EXIT_WAIT_S = 5.0


@attrs.define(eq=False)
class Handle:
    """A live server, the client that talks to it, and the engine handle that serves and closes both."""

    target: client.Target
    serving: EngineHandle
    http: Any
    server: process.Server | None
    request_timeout_s: float
    eos_token_id: int | None
    #: The client processes of ``server.client_processes`` > 1 (``None``: the client runs on :attr:`serving`'s loop).
    pool: fanout.Pool | None = None


def _tokenizer(source: str) -> tuple[Any, dict[str, Any]]:
    from transformers import AutoConfig, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a missing or odd tokenizer
        raise BackendError(
            f"server.tokenizer: cannot load a tokenizer from {source!r} ({type(exc).__name__}: {exc}); set "
            "server.tokenizer to a local tokenizer directory"
        ) from None
    try:
        model_config = AutoConfig.from_pretrained(source).to_dict()
    except Exception:  # a tokenizer-only directory: no architecture, so no analytical FLOPs
        model_config = {}
    return tok, model_config


def _model(config: ExperimentConfig) -> tuple[str, bool]:
    return architectures.resolve(config.model, config.load_format)


def _headers(config: ExperimentConfig) -> dict[str, str]:
    env = options.get(config, "api_key_env")
    key = os.environ.get(env) if env else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def _get_json(url: str, headers: Mapping[str, str]) -> Any:
    import httpx

    try:
        r = httpx.get(url, headers=dict(headers), timeout=10.0)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _version(spec: Engine | None, url: str, headers: Mapping[str, str], python: str) -> tuple[str | None, str]:
    path, key = spec.version if spec is not None and spec.version else ("/version", "version")
    if spec is not None and spec.version is None and spec.version_code:
        found = process.version_from_command([python, "-c", spec.version_code])
        return found, f"{python} -c {spec.version_code!r}" if found else "its version command failed"
    data = _get_json(url + path, headers)
    if isinstance(data, Mapping) and data.get(key) is not None:
        return str(data[key]), f"GET {path}"
    return None, f"GET {path} gave no {key!r}"


def _served_model(config: ExperimentConfig, url: str, headers: Mapping[str, str]) -> str:
    named = options.get(config, "model_name")
    if named:
        return str(named)
    data = _get_json(url + "/v1/models", headers)
    try:
        return str(data["data"][0]["id"])
    except (TypeError, KeyError, IndexError):
        raise BackendError(
            f"server at {url}: GET /v1/models names no model; set server.model_name to the model the server serves"
        ) from None


def _command(
    config: ExperimentConfig, spec: Engine | None, model: str, random: bool, host: str, port: int
) -> list[str]:
    python = options.get(config, "python")
    own = options.get(config, "command")
    if own is not None:
        fill = {"{host}": host, "{port}": str(port), "{model}": model}
        cmd = []
        for arg in own:
            for k, v in fill.items():
                arg = arg.replace(k, v)
            cmd.append(arg)
    else:
        assert spec is not None  # validate_config: engine or command
        cmd = launch_command(spec, config, model, host, port, python, random_weights=random)
        exe = options.get(config, "executable")
        if exe and "{python}" not in spec.program[0]:
            cmd[0] = exe
    return cmd + list(options.get(config, "args") or [])


#: Seconds the probe of a configured port waits for a connection (a squatter answers at once).
PORT_PROBE_S = 2.0


def _check_port(host: str, port: int) -> None:
    """Refuse a configured port another process already listens on: its health endpoint could answer
    for the server lem starts, and lem would measure that process instead."""
    if listening(host, port, PORT_PROBE_S):
        raise BackendError(
            f"server.port = {port}: another process already listens on {host}:{port}; stop it, choose another"
            " port, or set server.port = 0 (a free port)"
        )


def open_server(config: ExperimentConfig) -> tuple[Handle, Any, dict[str, Any], dict[str, Any]]:
    """Start (or reach) the experiment's server; returns the handle, tokenizer, model config and info."""
    opts = config.options_for(options.NAME)
    engine = opts.get("engine")
    spec = ENGINES.get(engine) if engine else None
    headers = _headers(config)
    t0 = time.monotonic()
    tokenizer, model_config = _tokenizer(opts.get("tokenizer") or _model(config)[0])
    info: dict[str, Any] = {
        "engine": engine,
        "tokenizer": opts.get("tokenizer") or config.model,
        "tokenizer_load_s": time.monotonic() - t0,
        "timing": TIMING,
        "token_counts": COUNTS,
        "api_key_env": opts.get("api_key_env"),  # the variable's name, never its value
    }
    server: process.Server | None = None
    python = options.get(config, "python") or sys.executable
    if opts.get("url"):
        url = str(opts["url"]).rstrip("/")
        info.update({"mode": "external", "url": url, "energy_scope": options.EXTERNAL_ENERGY})
        info["hardware"] = hardware.external(url)  # the device's name, for the roofline figures' peaks
        _wait_external(url, opts.get("health_path") or (spec.health if spec else "/health"), config, headers)
    else:
        host = options.get(config, "host")
        port = int(options.get(config, "port")) or free_port(host)
        _check_port(host, port)
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        model, random = _model(config)
        cmd = _command(config, spec, model, random, host, port)
        log = Path(opts.get("log_file") or Path(tempfile.mkdtemp(prefix="lem-server-")) / "server.log")
        env = {str(k): str(v) for k, v in (opts.get("env") or {}).items()}
        server = process.start(cmd, url, log, env, float(options.get(config, "shutdown_grace_s")))
        try:
            health = opts.get("health_path") or (spec.health if spec else "/health")
            process.wait_healthy(server, health, float(options.get(config, "startup_timeout_s")), headers)
        except BaseException:
            process.stop(server)
            raise
        info.update(
            {
                "mode": "managed",
                "url": url,
                "command": cmd,
                "env_keys": sorted(env),  # values may hold secrets
                "log_file": str(log),
                "started_at": server.started_at,
                "spawn_s": server.spawn_s,
                "health_wait_s": server.health_wait_s,
                "health_path": health,
                "random_weights": random,
                "energy_scope": "the GPUs of this machine, where lem runs the server",
                # The device's name, for the roofline figures' peaks (lem.figures.hardware).
                "hardware": hardware.managed(config, engine, env, python),
            }
        )
    serving: EngineHandle | None = None
    try:
        served = _served_model(config, url, headers)
        version, source = _version(spec, url, headers, python)
        info.update({"served_model": served, "engine_version": version, "engine_version_source": source})
        fmt = options.get(config, "prompt_format")
        ids = (spec.token_ids if spec is not None else False) if fmt == "auto" else fmt == "token_ids"
        info["prompt_format"] = "token_ids" if ids else "text (the server tokenizes it)"
        target = client.Target(url, served, engine, ids, headers)
        serving = EngineHandle("lem-server")
        assert serving.loop is not None
        http = serving.loop.call(client.session())
    except BaseException:
        if serving is not None:
            serving.close()
        if server is not None:
            process.stop(server)
        raise
    eos = getattr(tokenizer, "eos_token_id", None)
    timeout_s = float(options.get(config, "request_timeout_s"))
    handle = Handle(target, serving, http, server, timeout_s, eos)
    serving.shutdown = lambda: _shutdown(handle)
    n = int(options.get(config, "client_processes"))
    info["client_processes"] = n
    if n > 1:
        handle.pool = fanout.Pool(target, n, timeout_s)
        try:
            handle.pool.start()
        except BaseException:
            serving.close()
            raise
    return handle, tokenizer, model_config, info


def _shutdown(handle: Handle) -> None:
    """Stop the client processes, close the client (on the loop), then stop the managed server."""
    try:
        if handle.pool is not None:
            handle.pool.stop(ask=True)
        assert handle.serving.loop is not None
        try:
            handle.serving.loop.call(handle.http.close(), timeout=10)
        except Exception:  # a dead server can leave the client unable to close cleanly; the server still goes
            pass
    finally:
        if handle.server is not None:
            process.stop(handle.server)


def _wait_external(url: str, path: str, config: ExperimentConfig, headers: Mapping[str, str]) -> None:
    import httpx

    startup_s = float(options.get(config, "startup_timeout_s"))
    deadline = time.monotonic() + startup_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + path, headers=dict(headers), timeout=5.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(process.POLL_S)
    raise BackendError(
        f"server.url = {url!r}: GET {path} did not answer 200 within {startup_s:g} s (server.startup_timeout_s) "
        f"({last}); start the server, or fix server.url"
    )


def serve(
    handle: Handle, requests: Sequence[Request], params: GenerationConfig, config: ExperimentConfig
) -> Iterator[TokenEvent]:
    """The cycle's events from the server, on the traffic schedule of lem's shared driver (in each client
    process, with ``server.client_processes`` > 1: :mod:`lem_backend_server.fanout`)."""
    assert handle.serving.loop is not None
    if handle.pool is not None:
        payloads = {r.id: client.body(handle.target, r, params, config, handle.eos_token_id) for r in requests}
        return _explained(handle.pool.serve(requests, payloads, config.traffic), handle)

    def submit(req: Request) -> Any:
        payload = client.body(handle.target, req, params, config, handle.eos_token_id)
        return client.complete(handle.http, handle.target, payload)

    events = stream(
        handle.serving.loop,
        requests,
        config.traffic,
        submit,
        request_timeout_s=handle.request_timeout_s,
        timeout_key="server.request_timeout_s",
    )
    return _explained(events, handle)


def _explained(events: Iterator[TokenEvent], handle: Handle) -> Iterator[TokenEvent]:
    import subprocess

    try:
        yield from events
    except Exception as exc:
        if isinstance(exc, BackendError):
            raise
        server = handle.server
        if server is None:
            raise BackendError(
                f"the server at {handle.target.url} stopped answering: {type(exc).__name__}: {exc}"
            ) from exc
        try:  # a refused connection can come a moment before the process is gone
            server.proc.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
        code = server.proc.poll()
        what = f"exited with status {code}" if code is not None else f"stopped answering ({type(exc).__name__}: {exc})"
        tail = process.log_tail(server.log_path)
        raise BackendError(f"the server {what} during the cycle; its log {server.log_path} ends with:\n{tail}") from exc


def close(handle: Handle) -> None:
    """Cancel the requests in flight, close the client, stop the managed server, close the loop (safe to call twice)."""
    handle.serving.close()
