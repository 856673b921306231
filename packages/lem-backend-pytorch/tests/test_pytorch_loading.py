"""load_model: every model option reaches transformers (real tiny models on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from pytorch_helpers import load, make_config, serve, token_requests

from lem.errors import BackendError


@pytest.fixture
def spy_from_pretrained(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the kwargs the real AutoModelForCausalLM.from_pretrained receives (it still loads)."""
    calls: list[dict[str, Any]] = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__  # classmethod

    def recording(cls: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append({"path": path, **kwargs})
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    return calls


def test_from_pretrained_receives_every_option(tiny_llama: Path, spy_from_pretrained: list) -> None:
    config = make_config(
        str(tiny_llama),
        precision="bfloat16",
        revision="main",
        pytorch={"attn_implementation": "eager", "device_map": "cpu", "max_memory": {"cpu": "2GiB"}},
    )
    model = load(config)
    (kwargs,) = spy_from_pretrained
    assert kwargs["path"] == str(tiny_llama)
    assert kwargs["dtype"] is torch.bfloat16
    assert kwargs["attn_implementation"] == "eager"
    assert kwargs["device_map"] == "cpu"
    assert kwargs["max_memory"] == {"cpu": "2GiB"}
    assert kwargs["revision"] == "main"
    assert kwargs["trust_remote_code"] is False  # off unless the config says so
    hf = model.handle.model
    # ... and they took effect on the model itself.
    assert hf.config._attn_implementation == "eager"
    assert next(hf.parameters()).dtype is torch.bfloat16
    assert {p.device.type for p in hf.parameters()} == {"cpu"}
    assert model.info["from_pretrained"]["attn_implementation"] == "eager"


def test_trust_remote_code_is_passed_when_asked(tiny_llama: Path, spy_from_pretrained: list) -> None:
    load(make_config(str(tiny_llama), trust_remote_code=True))
    assert spy_from_pretrained[0]["trust_remote_code"] is True


def test_sdpa_is_the_default_attention(tiny_model: Any) -> None:
    assert tiny_model.handle.model.config._attn_implementation == "sdpa"


def test_low_cpu_mem_usage_is_recorded_not_silently_dropped(tiny_model: Any) -> None:
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert "low_cpu_mem_usage" in tiny_model.info
        assert "low_cpu_mem_usage" not in tiny_model.info["from_pretrained"]
    else:
        assert tiny_model.info["from_pretrained"]["low_cpu_mem_usage"] is True


def test_loaded_model_contract(tiny_model: Any, tiny_llama: Path) -> None:
    assert tiny_model.backend == "pytorch"
    assert tiny_model.devices == ()  # CPU: nothing to meter
    saved = json.loads((tiny_llama / "config.json").read_text())
    assert tiny_model.model_config["hidden_size"] == saved["hidden_size"]
    assert tiny_model.num_parameters == sum(p.numel() for p in tiny_model.handle.model.parameters())
    assert tiny_model.tokenizer.padding_side == "left"
    assert tiny_model.info["versions"]["transformers"] == transformers.__version__
    tiny_model.synchronize()  # a no-op on the CPU, but callable


def test_checkpoint_generation_defaults_do_not_leak(tiny_llama: Path, tmp_path: Path) -> None:
    # A checkpoint whose generation_config.json asks for sampling; lem's [generation] must win.
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_llama, model_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    gen.update({"do_sample": True, "temperature": 0.01, "top_k": 3})
    (model_dir / "generation_config.json").write_text(json.dumps(gen))
    config = make_config(str(model_dir), generation={"max_output_tokens": 6})
    model = load(config)
    assert model.info["checkpoint_generation_defaults_ignored"]["do_sample"] is True
    first = [e.token_ids for e in serve(model, token_requests(1), config)]
    second = [e.token_ids for e in serve(model, token_requests(1), config)]
    assert first == second  # greedy, as [generation] says (do_sample = false by default)


@pytest.mark.parametrize("name", ["random:tiny-llama", "random:tiny-gpt2"])
def test_builtin_random_models_load_offline(name: str) -> None:
    model = load(make_config(name, generation={"max_output_tokens": 4, "ignore_eos": True}))
    assert model.info["random_weights"] is True and "built-in" in model.info["tokenizer"]
    events = serve(model, token_requests(2), make_config(name, generation={"max_output_tokens": 4, "ignore_eos": True}))
    assert sum(e.n_tokens for e in events) == 8


def test_load_format_random_ignores_the_weights(tiny_llama: Path, tiny_model: Any) -> None:
    model = load(make_config(str(tiny_llama), load_format="random", seed=123))
    assert model.info["random_weights"] is True
    saved = dict(tiny_model.handle.model.named_parameters())
    built = dict(model.handle.model.named_parameters())
    assert saved.keys() == built.keys()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[name], built[name])


def test_random_model_with_device_map_is_built_and_initialised() -> None:
    # The meta-device path used for multi-GPU random models, here with every part on the CPU.
    model = load(make_config("random:tiny-llama", pytorch={"device_map": {"": "cpu"}}))
    params = list(model.handle.model.parameters())
    assert all(torch.isfinite(p).all() for p in params)
    assert any(p.abs().sum() > 0 for p in params)
    events = serve(
        model,
        token_requests(1),
        make_config("random:tiny-llama", generation={"max_output_tokens": 3, "ignore_eos": True}),
    )
    assert sum(e.n_tokens for e in events) == 3


def test_lora_adapter_is_applied(tiny_llama: Path, tmp_path: Path, tiny_model: Any) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    # init_lora_weights=False: a non-zero update, so the adapter visibly changes the outputs.
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    config = make_config(
        str(tiny_llama), adapter=str(tmp_path / "adapter"), generation={"max_output_tokens": 8, "ignore_eos": True}
    )
    model = load(config)
    assert isinstance(model.handle.model, PeftModel)
    assert model.info["adapter"] == str(tmp_path / "adapter")
    ids = torch.tensor([list(token_requests(1)[0].prompt_token_ids or ())])
    with torch.no_grad():
        with_adapter = model.handle.model(input_ids=ids).logits
        without = tiny_model.handle.model(input_ids=ids).logits
    assert not torch.allclose(with_adapter, without)


def test_missing_bitsandbytes_is_a_clear_error(tiny_llama: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    from lem.configfile.loading import structure

    config, _ = structure({"model": str(tiny_llama), "quantization": {"method": "bnb-8bit"}})
    with pytest.raises(BackendError, match="pip install bitsandbytes"):
        load(config)


def test_pre_quantized_method_on_a_plain_checkpoint_is_refused(tiny_llama: Path) -> None:
    from lem.configfile.loading import structure

    config, _ = structure({"model": str(tiny_llama), "quantization": {"method": "awq"}})
    with pytest.raises(BackendError, match="not a awq checkpoint"):
        load(config)


def test_unknown_builtin_is_a_clear_error() -> None:
    from lem.configfile.loading import structure

    config, _ = structure({"model": "random:llama-9"})
    with pytest.raises(BackendError, match="unknown built-in architecture"):
        load(config)


def test_close_frees_the_model(tiny_llama: Path) -> None:
    model = load(make_config(str(tiny_llama)))
    model.close()
    assert model.handle.model is None
