"""The peaks table, the [hardware] override and the null cases of the roofline figures."""

from __future__ import annotations

from lem.config import HardwareConfig
from lem.configfile.loading import config_from_dict
from lem.figures import flops, hardware
from lem.figures.requests import RequestTrace


def test_every_table_entry_names_its_source_and_has_dense_bf16_below_fp8() -> None:
    for name, entry in hardware.PEAKS.items():
        assert name.startswith("NVIDIA ") and ("datasheet" in entry.source or "specifications" in entry.source)
        assert entry.memory_bandwidth_gbs > 0 and entry.tflops["bfloat16"] > entry.tflops["float32"]
        if "fp8" in entry.tflops:
            assert entry.tflops["fp8"] > entry.tflops["bfloat16"]


def test_a_known_device_uses_the_table_and_the_override_wins() -> None:
    got = hardware.peaks("NVIDIA H100 80GB HBM3", 2, HardwareConfig(), "bfloat16")
    assert got["peak_memory_bandwidth_gbs"] == 3350 and got["peak_tflops"] == 989.4 and got["devices"] == 2
    assert "H100" in got["peak_memory_bandwidth_source"]
    over = hardware.peaks("NVIDIA H100 80GB HBM3", 1, HardwareConfig(peak_memory_bandwidth_gbs=3000.0), "bfloat16")
    assert over["peak_memory_bandwidth_gbs"] == 3000.0
    assert over["peak_memory_bandwidth_source"] == "[hardware] peak_memory_bandwidth_gbs"


def test_unknown_hardware_and_a_precision_mismatch_are_null_with_the_reason() -> None:
    got = hardware.peaks("NVIDIA Future GPU", 1, HardwareConfig(), "bfloat16")
    assert got["peak_memory_bandwidth_gbs"] is None and got["peak_tflops"] is None
    assert "'NVIDIA Future GPU' is not in lem's peaks table" in got["peak_memory_bandwidth_reason"]
    mismatch = hardware.peaks(None, 1, HardwareConfig(peak_tflops=10.0, peak_tflops_precision="fp8"), "bfloat16")
    assert mismatch["peak_tflops"] is None and "applies to fp8" in mismatch["peak_tflops_reason"]
    assert hardware.peaks("NVIDIA A100-SXM4-80GB", 1, HardwareConfig(), "fp8")["peak_tflops"] is None


def test_quantized_widths() -> None:
    cfg = {"quantization_config": {"bits": 4, "group_size": 128}}
    assert flops.weight_widths("bfloat16", "bnb-8bit", {})["layers"] == 1.0
    assert flops.weight_widths("bfloat16", "bnb-4bit", {})["layers"] == 0.5 + 4 / 64
    assert flops.weight_widths("bfloat16", "gptq", cfg)["layers"] == 0.5 + 2.5 / 128
    assert flops.weight_widths("bfloat16", "fp8", {})["head"] == 2.0
    assert flops.gguf_bytes({"Q4_K": 512, "F32": 10}) == 2 * 144 + 40
    assert flops.gguf_bytes({"NOT_A_TYPE": 1}) is None


def _trace(i: int, first_ns: int, steps: int, gap_ns: int = 1_000_000) -> RequestTrace:
    return RequestTrace(i, 16, 0, tuple((first_ns + k * gap_ns, 1) for k in range(steps)), True)


def test_continuous_batching_leaves_mfu_null_and_one_token_requests_leave_mbu_null() -> None:
    from lem.architectures import config_dict

    info = {"model_config": config_dict("tiny-llama"), "info": {}}
    config = config_from_dict({"model": "random:tiny-llama", "hardware": {"peak_memory_bandwidth_gbs": 10.0}})
    fl = flops.cycle_flops(info["model_config"], None, [(16, 8), (16, 8)])
    # The second request's first token arrives while the first is mid-decode.
    overlap = hardware.cycle_roofline([_trace(0, 0, 8), _trace(1, 3_500_000, 8)], info, config, fl)
    assert overlap["memory_bandwidth_utilization"] is not None and overlap["flops_utilization"] is None
    assert "overlapped decode" in overlap["flops_reason"]
    single = hardware.cycle_roofline(
        [_trace(0, 0, 1)], info, config, flops.cycle_flops(info["model_config"], None, [(16, 1)])
    )
    assert single["memory_bandwidth_utilization"] is None and "no decode step" in single["mbu_reason"]
