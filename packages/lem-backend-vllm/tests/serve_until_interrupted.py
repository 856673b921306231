"""Helper for test_vllm_shutdown.py: load the tiny model with AsyncLLM, stream a long generation until interrupted.

Run as ``python serve_until_interrupted.py MODEL_DIR``; prints READY when tokens are flowing. It never calls
``close()``: the Ctrl-C path (atexit) must end the engine processes by itself.
"""

from __future__ import annotations

import sys

from lem.configfile.loading import config_from_dict
from lem.types import Request


def main() -> None:
    from lem_backend_vllm import plugin

    config = config_from_dict(
        {
            "model": sys.argv[1],
            "backend": "vllm",
            "precision": "float32",
            "generation": {"max_output_tokens": 2000, "ignore_eos": True},
            "vllm": {"enforce_eager": True, "max_model_len": 2048},
        }
    )
    model = plugin.load_model(backend="vllm", config=config)
    assert model is not None
    requests = [Request(0, "", 3, prompt_token_ids=(5, 6, 7))]
    stream = plugin.generate_stream(model=model, requests=requests, params=config.generation, config=config)
    assert stream is not None
    for i, _event in enumerate(stream):
        if i == 3:
            print("READY", flush=True)


if __name__ == "__main__":
    main()
