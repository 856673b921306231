"""Launch commands, request bodies and validation, without starting a server.

SGLang, trtllm-serve and TGI cannot run on this machine: their commands are checked here as argument
lists against the flags their documentation lists (SGLang's server-arguments page, trtllm-serve's command
reference, TGI's text-generation-launcher reference). vLLM's and llama.cpp's are also parsed by the
installed engines' own argument parsers (skipped where the engine is not installed).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from lem.types import Request
from lem_backend_server import client, options, plugin
from lem_backend_server.engines import ENGINES, launch_command

#: Flags each engine documents, for the parts of the command lem builds (from the pages named above).
DOCUMENTED = {
    "sglang": {"--model-path", "--host", "--port", "--dtype", "--random-seed", "--tp-size", "--pp-size", "--revision",
               "--trust-remote-code", "--quantization", "--load-format", "--max-running-requests"},
    "trtllm": {"--host", "--port", "--backend", "--tp_size", "--pp_size", "--trust_remote_code", "--max_batch_size"},
    "tgi": {"--model-id", "--hostname", "--port", "--dtype", "--num-shard", "--revision", "--trust-remote-code",
            "--quantize", "--max-concurrent-requests"},
}  # fmt: skip


def _config(make_config: Any, model: str = "org/model", **tables: Any) -> Any:
    base = {
        "precision": "bfloat16",
        "seed": 7,
        "revision": "r1",
        "trust_remote_code": True,
        "sharding": {"tensor_parallel_size": 2},
        "batching": {"batch_size": 8},
    }
    base.update(tables)
    return make_config(model, {"engine": "vllm"}, check=False, **base)


def test_every_engine_command(make_config: Any) -> None:
    cfg = _config(make_config, quantization={"method": "awq"})
    py = "/env/bin/python"
    host, port = "127.0.0.1", "8000"
    common = ["--host", host, "--port", port]
    assert launch_command(ENGINES["vllm"], cfg, "org/model", host, 8000, py) == [
        py, "-m", "vllm.entrypoints.openai.api_server", "--model", "org/model", *common, "--dtype", "bfloat16",
        "--seed", "7", "--tensor-parallel-size", "2", "--revision", "r1", "--trust-remote-code",
        "--quantization", "awq", "--max-num-seqs", "8",
    ]  # fmt: skip
    assert launch_command(ENGINES["sglang"], cfg, "org/model", host, 8000, py) == [
        py, "-m", "sglang.launch_server", "--model-path", "org/model", *common, "--dtype", "bfloat16",
        "--random-seed", "7", "--tp-size", "2", "--revision", "r1", "--trust-remote-code", "--quantization", "awq",
        "--max-running-requests", "8",
    ]  # fmt: skip
    assert launch_command(ENGINES["trtllm"], cfg, "org/model", host, 8000, py) == [
        "trtllm-serve", "org/model", *common, "--tp_size", "2", "--trust_remote_code", "--max_batch_size", "8",
        "--backend", "pytorch",
    ]  # fmt: skip
    # TGI: "--dtype cannot be used with --quantize".
    assert launch_command(ENGINES["tgi"], cfg, "org/model", host, 8000, py) == [
        "text-generation-launcher", "--model-id", "org/model", "--hostname", host, "--port", port,
        "--num-shard", "2", "--revision", "r1", "--trust-remote-code", "--quantize", "awq",
        "--max-concurrent-requests", "8",
    ]  # fmt: skip
    gguf = _config(make_config, model="m.gguf")
    assert launch_command(ENGINES["llamacpp"], gguf, "m.gguf", host, 8000, py) == [
        py, "-m", "llama_cpp.server", "--model", "m.gguf", *common, "--seed", "7", "--split_mode", "2",
        "--n_gpu_layers", "-1", "--interrupt_requests", "False",
    ]  # fmt: skip


@pytest.mark.parametrize("engine", sorted(DOCUMENTED))
def test_flags_are_documented(make_config: Any, engine: str) -> None:
    cfg = _config(make_config, sharding={"tensor_parallel_size": 2, "pipeline_parallel_size": 2},
                  quantization={"method": "fp8"})  # fmt: skip
    cmd = launch_command(ENGINES[engine], cfg, "org/model", "127.0.0.1", 8000, "python", random_weights=True)
    flags = {a for a in cmd if a.startswith("--")}
    assert flags <= DOCUMENTED[engine], flags - DOCUMENTED[engine]


def test_vllm_flags_parse_with_installed_vllm(make_config: Any) -> None:
    pytest.importorskip("vllm")
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # vLLM before the launchers package
        from vllm.entrypoints.openai.cli_args import make_arg_parser

    cfg = _config(make_config, quantization={"method": "awq"})
    cmd = launch_command(ENGINES["vllm"], cfg, "org/model", "127.0.0.1", 8000, "python", random_weights=True)
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(cmd[3:])
    assert (args.model, args.dtype, args.seed, args.tensor_parallel_size) == ("org/model", "bfloat16", 7, 2)
    assert (args.max_num_seqs, args.load_format, args.quantization, args.port) == (8, "dummy", "awq", 8000)


def test_llamacpp_flags_parse_with_installed_llama_cpp(make_config: Any) -> None:
    pytest.importorskip("llama_cpp.server")
    import argparse

    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    cfg = _config(make_config, model="m.gguf", sharding={"pipeline_parallel_size": 2})
    cmd = launch_command(ENGINES["llamacpp"], cfg, "m.gguf", "127.0.0.1", 8000, "python")
    parser = argparse.ArgumentParser()
    add_args_from_model(parser, ModelSettings)
    add_args_from_model(parser, ServerSettings)
    args = parser.parse_args(cmd[3:])
    server = parse_model_from_args(ServerSettings, args)
    model = parse_model_from_args(ModelSettings, args)
    assert (server.port, server.interrupt_requests) == (8000, False)
    assert (model.model, model.seed, model.split_mode, model.n_gpu_layers) == ("m.gguf", 7, 1, -1)


def test_body_maps_sampling_per_engine(make_config: Any) -> None:
    gen = {"max_output_tokens": 5, "min_output_tokens": 2, "top_k": 4, "repetition_penalty": 1.1, "ignore_eos": True}
    cfg = make_config("m", {"engine": "vllm"}, generation=gen)
    req = Request(0, "hi there", 2, prompt_token_ids=(9, 10))
    vllm = client.body(client.Target("u", "m", "vllm", True), req, cfg.generation, cfg, eos_token_id=2)
    assert vllm == {
        "model": "m", "prompt": [9, 10], "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": 5, "temperature": 0.0, "top_p": 1.0, "seed": 42, "top_k": 4, "repetition_penalty": 1.1,
        "min_tokens": 2, "ignore_eos": True, "return_token_ids": True,
    }  # fmt: skip
    llama = client.body(client.Target("u", "m", "llamacpp", False), req, cfg.generation, cfg, eos_token_id=2)
    assert llama["prompt"] == "hi there" and llama["repeat_penalty"] == 1.1 and llama["logprobs"] == 0
    assert llama["logit_bias"] == {"2": -1e9} and "ignore_eos" not in llama
    tgi = client.body(client.Target("u", "m", "tgi", False), req, cfg.generation, cfg)
    assert "top_k" not in tgi and "min_tokens" not in tgi and "ignore_eos" not in tgi
    plain = client.body(client.Target("u", "m", None, False), req, cfg.generation, cfg)
    assert set(plain) == {"model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed"}


def test_chunk_counts() -> None:
    assert client.chunk_count({"text": "ab", "token_ids": [4, 5]}) == ((4, 5), 2)
    assert client.chunk_count({"text": "", "logprobs": {"tokens": ["", "x"]}}) == ((), 2)
    assert client.chunk_count({"text": "x"}) == ((), 1)
    assert client.chunk_count({"text": "", "finish_reason": "length"}) == ((), 0)


def _problems(cfg: Any) -> dict[str, str]:
    return {f"{p.severity}:{p.path}": p.message for p in plugin.validate_config(config=cfg)}


def test_validation(make_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _problems(make_config("m", {"engine": "vllm"}, False)) == {}
    bad = _problems(make_config("m", {"engine": "vlm", "comand": ["x"]}, False))
    assert "error:server.comand" in bad
    assert "must be one of vllm, sglang" in _problems(make_config("m", {"engine": "vlm"}, False))["error:server.engine"]
    assert "error:server" in _problems(make_config("m", {}, False))
    assert "error:server.port" in _problems(make_config("m", {"engine": "vllm", "port": "80"}, False))
    external = _problems(make_config("m", {"url": "http://127.0.0.1:9"}, False))
    assert "this machine's GPUs only" in external["warning:server.url"]
    assert "error:server.url" in _problems(make_config("m", {"url": "127.0.0.1:9"}, False))
    assert "error:server.tokenizer" in _problems(make_config("m.gguf", {"engine": "llamacpp"}, False))
    tgi = _problems(make_config("m", {"engine": "tgi"}, False, generation={"top_k": 5}))
    assert "error:precision" in tgi and "warning:generation.top_k" in tgi
    assert "error:sharding.pipeline_parallel_size" in _problems(
        make_config("m", {"engine": "tgi"}, False, precision="bfloat16", sharding={"pipeline_parallel_size": 2})
    )
    monkeypatch.delenv("LEM_TEST_NO_SUCH_KEY", raising=False)
    cfg = make_config("m", {"engine": "vllm", "api_key_env": "LEM_TEST_NO_SUCH_KEY"}, False)
    assert "warning:server.api_key_env" in _problems(cfg)
    # Another backend's experiment is not ours to check.
    assert plugin.validate_config(config=make_config("m", {"x": 1}, False, backend="pytorch")) == []


def test_every_key_launch_reads_is_declared() -> None:
    import re

    from lem_backend_server import launch

    read = set(re.findall(r'options\.get\(config, "(\w+)"\)', Path(launch.__file__).read_text()))
    assert read and read <= set(options.TABLE.keys)


def test_help_does_not_import_http_or_engines() -> None:
    import subprocess

    heavy = "{'aiohttp', 'httpx', 'transformers', 'torch'}"
    code = f"import lem_backend_server.plugin, sys; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
