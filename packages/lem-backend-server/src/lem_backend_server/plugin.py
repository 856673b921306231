"""The ``server`` backend's hooks: start or reach an OpenAI-compatible server, stream from it, validate.

httpx, transformers and every engine are imported only inside these hooks' callees.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from lem import hookimpl
from lem.config import ExperimentConfig, GenerationConfig
from lem.types import LoadedModel, Problem, Request, TokenEvent
from lem_backend_server import launch, options

NAME = options.NAME
TABLES = options.TABLES  # lem plugins --options server


@hookimpl
def load_model(backend: str, config: ExperimentConfig) -> LoadedModel | None:
    """Start the ``[server]`` engine (or reach ``server.url``) and wait until it is healthy."""
    if backend != NAME:
        return None
    handle, tokenizer, model_config, info = launch.open_server(config)
    return LoadedModel(
        backend=NAME,
        handle=handle,
        tokenizer=tokenizer,
        # The server owns its GPUs; the meter takes them from measurement.devices or the sharding sizes.
        devices=(),
        model_config=model_config,
        info=info,
        # A streamed token has been computed by the time it reaches us: nothing is left queued on a device.
        synchronize=lambda: None,
        close=lambda: launch.close(handle),
    )


@hookimpl
def generate_stream(
    model: LoadedModel, requests: Sequence[Request], params: GenerationConfig, config: ExperimentConfig
) -> Iterator[TokenEvent] | None:
    """Send the cycle's requests to the server on the traffic schedule; one event per streamed chunk."""
    if model.backend != NAME:
        return None
    return launch.serve(model.handle, requests, params, config)


@hookimpl
def validate_config(config: ExperimentConfig) -> list[Problem]:
    """Check ``[server]`` and what the chosen engine cannot carry (only when the backend is ``server``)."""
    if config.backend != NAME:
        return []
    return options.check_options(config)
