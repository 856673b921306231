"""Conversion to GGUF for real: Hugging Face directories and built-ins, cached by digest, quantized by llama.cpp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from llamacpp_helpers import load, make_config, refuse_amx_build, serve, token_requests

from lem.errors import BackendError, ConfigError
from lem_backend_llamacpp import convert

GEN = {"max_output_tokens": 16, "ignore_eos": True, "do_sample": False}


def _tokens(model: Any, config: Any) -> list[int]:
    return [t for e in serve(model, token_requests(1), config) for t in e.token_ids]


def test_hf_directory_f32_generates_what_transformers_generates(tiny_llama: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    config = make_config(str(tiny_llama), generation=GEN, llamacpp={"cache_dir": str(tmp_path)})
    model = load(config)
    try:
        ours = _tokens(model, config)
    finally:
        model.close()
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    prompt = torch.tensor([token_requests(1)[0].prompt_token_ids])
    out = hf.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    assert ours == out[0, prompt.shape[1] :].tolist()
    assert len(set(ours)) >= 12


def test_conversion_is_cached_by_digest_and_timed_apart_from_load(tmp_path: Path) -> None:
    table = {"cache_dir": str(tmp_path)}
    first = convert.gguf_for(make_config("random:tiny-llama", llamacpp=table))
    assert not first.cached and first.seconds is not None and first.seconds > 0
    assert first.path.parent == tmp_path / "gguf" and first.path.name.endswith("-f32.gguf")
    again = convert.gguf_for(make_config("random:tiny-llama", llamacpp=table))
    assert again.cached and again.seconds == 0.0 and again.path == first.path
    # Anything that changes the bytes changes the digest: the seed of random weights, the type.
    other_seed = convert.gguf_for(make_config("random:tiny-llama", seed=1, llamacpp=table))
    f16 = convert.gguf_for(make_config("random:tiny-llama", llamacpp={**table, "quantization": "f16"}))
    assert len({first.digest, other_seed.digest, f16.digest}) == 3
    assert f16.path.stat().st_size < first.path.stat().st_size


@pytest.mark.parametrize("quant", ["f16", "bf16", "q8_0", "q4_k_m"])
def test_each_kind_of_type_converts_loads_and_streams(quant: str, tmp_path: Path) -> None:
    """f16/bf16/q8_0 are written by the gguf package; q4_k_m by llama.cpp's quantizer from the f32 file."""
    import gguf

    if quant in ("q8_0", "q4_k_m"):
        refuse_amx_build()
    config = make_config(
        "random:tiny-llama", generation=GEN, llamacpp={"quantization": quant, "cache_dir": str(tmp_path)}
    )
    model = load(config)
    try:
        assert len(_tokens(model, config)) == 16
        assert model.info["conversion"]["quantization"] == quant
    finally:
        model.close()
    reader = gguf.GGUFReader(model.info["gguf"])
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"  # norms stay f32
    expected = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_k_m": None}[quant]
    if expected:
        assert types["blk.0.attn_q.weight"] == expected
    else:  # llama.cpp falls back where a row (128 here) is not a multiple of the K-quant block (256)
        assert types["blk.0.attn_q.weight"] not in ("F32", "F16")


def test_a_gguf_file_loads_as_is_with_its_own_tokenizer(tiny_model: Any) -> None:
    path = tiny_model.info["gguf"]
    config = make_config(path, generation=GEN)
    model = load(config)
    try:
        assert model.info["conversion"] is None
        assert model.model_config["hidden_size"] == 128 and model.model_config["num_hidden_layers"] == 2
        assert _tokens(model, config) == _tokens(tiny_model, config)
        assert model.tokenizer is not None  # transformers reads the GGUF's vocabulary
        assert model.tokenizer.encode("energy", add_special_tokens=False) == tiny_model.tokenizer.encode(
            "energy", add_special_tokens=False
        )
    finally:
        model.close()


def test_what_lem_cannot_convert_or_find_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"converts only LlamaForCausalLM.*convert_hf_to_gguf\.py"):
        convert.gguf_for(make_config("random:tiny-gpt2", llamacpp={"cache_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match=r"model = '.*missing\.gguf': local path not found"):
        convert.gguf_for(make_config(str(tmp_path / "missing.gguf")))


def test_a_k_quant_fallback_is_recorded_and_warned(tmp_path: Path) -> None:
    """q4_k_m of the tiny Llama through `lem run`: rows of 128 are not a multiple of the K-quant block (256), so
    llama.cpp makes other types for some tensors; the counts, the fallback count and the warning say so."""
    import json
    import os
    import subprocess
    import sys

    import gguf

    refuse_amx_build()
    toml = tmp_path / "k.toml"
    toml.write_text(
        f"""model = "random:tiny-llama"
backend = "llamacpp"
precision = "float32"
[dataset]
num_prompts = 2
input_length = 8
[generation]
max_output_tokens = 4
ignore_eos = true
[measurement]
warmup_requests = 0
cycles = 1
idle_seconds = 0.0
energy_meter = "none"
[llamacpp]
quantization = "q4_k_m"
cache_dir = "{tmp_path / "cache"}"
"""
    )
    lem = [sys.executable, "-m", "lem", "run", str(toml), "--in-process", "--out", str(tmp_path / "out")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(lem, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    (exp_dir,) = (tmp_path / "out").glob("*/exp")
    info = json.loads((exp_dir / "setup.json").read_text())["model_info"]["info"]
    # The counts are the file's own: read again here from the GGUF header.
    header: dict[str, int] = {}
    for tensor in gguf.GGUFReader(info["gguf"]).tensors:
        header[tensor.tensor_type.name] = header.get(tensor.tensor_type.name, 0) + 1
    assert info["tensor_types"] == header
    k_types = {t: n for t, n in header.items() if t.endswith("_K")}
    fell_back = {t: n for t, n in header.items() if not t.endswith("_K") and t not in ("F32", "F16")}
    assert k_types and fell_back  # some tensors got their K type, some another (q5_0, q8_0...)
    assert info["fallback_tensors"] == sum(fell_back.values())
    counted = f"{sum(fell_back.values())} of {sum(header.values())} tensors fell back"
    (warning,) = info["warnings"]
    assert warning.startswith(f"llamacpp.quantization = 'q4_k_m': {counted}")
    assert all(f"{t} {n}" in warning for t, n in header.items())
    assert warning in json.loads((exp_dir / "summary.json").read_text())["warnings"]
    assert "tensors fell back" in done.stdout + done.stderr  # on screen, as the run went
