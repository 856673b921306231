"""Peaks of common accelerators: memory bandwidth and dense tensor throughput, keyed by NVML device name.

Every entry gives the vendor's datasheet figures for one board (one GPU), with the
document it comes from. TFLOP/s are *dense* (NVIDIA's datasheets print the 2:4
sparse figure first, twice the dense one; lem counts dense FLOPs). ``float32``
is the non-tensor FP32 peak (PyTorch runs float32 matmuls without TF32 unless
told otherwise). A precision a board lacks (FP8 on an A100) is absent.

The ``[hardware]`` table of an experiment (:class:`lem.config.HardwareConfig`)
overrides these: a board not listed here, a clock-limited part, or a CPU whose
memory bandwidth the user knows. Without an entry or an override the
utilisation figures are null with the reason, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from lem.config import ExperimentConfig, HardwareConfig
from lem.figures import flops as flops_mod
from lem.figures.requests import RequestTrace

NS = 1e9


@attrs.frozen
class Peaks:
    """One board's peaks.

    :param memory_bandwidth_gbs: device memory bandwidth, GB/s (1e9 bytes per second).
    :param tflops: dense TFLOP/s by compute precision (``bfloat16``, ``float16``, ``fp8``, ``float32``).
    :param source: the document the figures come from.
    """

    memory_bandwidth_gbs: float
    tflops: Mapping[str, float]
    source: str


def _ampere(bw: float, fp16: float, fp32: float, source: str) -> Peaks:
    return Peaks(bw, {"bfloat16": fp16, "float16": fp16, "float32": fp32}, source)


def _fp8(bw: float, fp16: float, fp8: float, fp32: float, source: str) -> Peaks:
    return Peaks(bw, {"bfloat16": fp16, "float16": fp16, "fp8": fp8, "float32": fp32}, source)


_H100 = "NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100), dense = sparse / 2"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200), dense = sparse / 2"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100)"
_L40S = "NVIDIA L40S GPU datasheet (nvidia.com/en-us/data-center/l40s), dense = sparse / 2"
_L4 = "NVIDIA L4 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/l4), dense = sparse / 2"
_B200 = "NVIDIA HGX B200 specifications (nvidia.com/en-us/data-center/hgx), per GPU = 8-GPU figure / 8, dense"

#: NVML device name (``nvmlDeviceGetName``, also ``torch.cuda.get_device_name``) -> peaks.
PEAKS: dict[str, Peaks] = {
    "NVIDIA H100 80GB HBM3": _fp8(3350, 989.4, 1978.9, 66.9, _H100 + ", H100 SXM"),
    "NVIDIA H100 PCIe": _fp8(2000, 756.5, 1513.0, 51.2, _H100 + ", H100 PCIe"),
    "NVIDIA H100 NVL": _fp8(3938, 835.5, 1670.5, 60.0, _H100 + ", H100 NVL"),
    "NVIDIA H200": _fp8(4800, 989.4, 1978.9, 66.9, _H200 + ", H200 SXM"),
    "NVIDIA H200 NVL": _fp8(4800, 835.5, 1670.5, 60.0, _H200 + ", H200 NVL"),
    "NVIDIA A100-SXM4-40GB": _ampere(1555, 312.0, 19.5, _A100 + ", A100 40GB SXM"),
    "NVIDIA A100-SXM4-80GB": _ampere(2039, 312.0, 19.5, _A100 + ", A100 80GB SXM"),
    "NVIDIA A100-PCIE-40GB": _ampere(1555, 312.0, 19.5, _A100 + ", A100 40GB PCIe"),
    "NVIDIA A100 80GB PCIe": _ampere(1935, 312.0, 19.5, _A100 + ", A100 80GB PCIe"),
    "NVIDIA L40S": _fp8(864, 362.05, 733.0, 91.6, _L40S),
    "NVIDIA L4": _fp8(300, 121.0, 242.5, 30.3, _L4),
    "NVIDIA B200": _fp8(8000, 2250.0, 4500.0, 75.0, _B200),
}


def compute_precision(precision: str, quantization: str) -> str:
    """The precision matmuls run at: ``fp8`` under fp8 quantization, else the experiment's precision
    (bitsandbytes, GPTQ, AWQ and GGUF weights are dequantized to it)."""
    return "fp8" if quantization == "fp8" else precision


def peaks(
    device_name: str | None,
    shards: int,
    override: HardwareConfig,
    precision: str,
    measured: Mapping[str, Any] | None = None,
    device_reason: str | None = None,
) -> dict[str, Any]:
    """The peaks a cycle's utilisation is measured against, with where each comes from, or the reasons.

    :param device_name: the accelerator's NVML name (``None`` on the CPU or when the backend did not say).
    :param shards: the devices that work at once (tensor parallelism): the peaks are per device, the
        figures use them times this.
    :param override: ``[hardware]``; a value set there wins over the table.
    :param precision: the compute precision (:func:`compute_precision`).
    :param measured: a measured copy bandwidth the backend recorded (``gbs``, ``method``), kept beside.
    :param device_reason: why the backend could not name its device (:mod:`lem.accelerators`).
    """
    entry = PEAKS.get(device_name) if device_name else None
    if device_name is None:
        unknown = (
            device_reason or "the model ran on no accelerator lem knows (CPU, or the backend did not name its device)"
        )
    else:
        unknown = f"{device_name!r} is not in lem's peaks table (lem.figures.hardware)"
    hint = "; set [hardware] peak_memory_bandwidth_gbs"
    bw = override.peak_memory_bandwidth_gbs
    bw_source = "[hardware] peak_memory_bandwidth_gbs" if bw is not None else None
    bw_reason = None
    if bw is None and entry is not None:
        bw, bw_source = entry.memory_bandwidth_gbs, entry.source
    if bw is None:
        bw_reason = unknown + hint
    tf: float | None = None
    tf_source = tf_reason = None
    if override.peak_tflops is not None:
        if override.peak_tflops_precision == precision:
            tf, tf_source = override.peak_tflops, "[hardware] peak_tflops"
        else:
            tf_reason = (
                f"[hardware] peak_tflops applies to {override.peak_tflops_precision}, the model computed in {precision}"
            )
    elif entry is not None:
        tf = entry.tflops.get(precision)
        tf_source = entry.source if tf is not None else None
        tf_reason = None if tf is not None else f"{device_name} has no {precision} peak in lem's table"
    else:
        tf_reason = unknown + "; set [hardware] peak_tflops and peak_tflops_precision"
    return {
        "device_name": device_name,
        "devices": max(1, shards),
        "compute_precision": precision,
        "peak_memory_bandwidth_gbs": bw,
        "peak_memory_bandwidth_source": bw_source,
        "peak_memory_bandwidth_reason": bw_reason,
        "peak_tflops": tf,
        "peak_tflops_source": tf_source,
        "peak_tflops_reason": tf_reason,
        "measured_copy_bandwidth_gbs": (measured or {}).get("gbs"),
        "measured_copy_bandwidth_method": (measured or {}).get("method"),
        "measured_copy_bandwidth_reason": (measured or {}).get("reason")
        or (None if measured else "not measured by this backend"),
    }


# --- a cycle's distance from the roofline -----------------------------------------------------------------


def _widths(model_info: Mapping[str, Any], config: ExperimentConfig) -> dict[str, Any]:
    """Bytes per weight and per KV element: from the GGUF's own tensor types under llama.cpp, else from the
    precision and ``[quantization]`` (see :func:`lem.figures.flops.weight_widths`)."""
    cfg = model_info.get("model_config") or {}
    info = model_info.get("info") or {}
    widths = flops_mod.weight_widths(
        config.precision, config.quantization.method, cfg, config.quantization.bnb_4bit_use_double_quant
    )
    kv_types = info.get("kv_cache_types")
    if isinstance(kv_types, Mapping) and kv_types:
        sizes = [flops_mod.GGUF_BLOCKS.get(str(t).upper()) for t in kv_types.values()]
        if all(sizes):
            widths["kv"] = sum(b / n for n, b in sizes if n) / len(sizes)  # type: ignore[misc]
    elements = info.get("tensor_elements")
    embd = info.get("token_embd")
    if isinstance(elements, Mapping) and isinstance(embd, Mapping):
        total = flops_mod.gguf_bytes(elements)
        own = flops_mod.gguf_bytes({str(embd["type"]): int(embd["elements"])})
        if total is not None and own is not None:
            # Every tensor of the file is read per step but the token embedding (one row per sequence),
            # unless the output projection is tied to it.
            widths["gguf_weight_bytes"] = total - (0 if embd.get("tied") else own)
            widths["basis"] = "GGUF tensor types as loaded: " + ", ".join(f"{k} {v}" for k, v in elements.items())
    return widths


def step_bytes(
    model_info: Mapping[str, Any], config: ExperimentConfig, batch: float = 1.0
) -> tuple[float, float] | None:
    """``(weight bytes a decode step of ``batch`` sequences reads, KV bytes per context position)``, all shards
    together; ``None`` when the model config lacks the shapes."""
    s = flops_mod.shapes(model_info.get("model_config") or {})
    if s is None:
        return None
    widths = _widths(model_info, config)
    weights = widths.get("gguf_weight_bytes") or flops_mod.weight_bytes_per_step(s, widths, batch)
    return float(weights), flops_mod.kv_bytes_per_position(s, widths)


def _decode_intervals(traces: Sequence[RequestTrace]) -> list[tuple[float, float]]:
    return [(t.events[0][0] / NS, t.events[-1][0] / NS) for t in traces if sum(n for _, n in t.events) > 1]


def _prefill_s(
    traces: Sequence[RequestTrace], decode: Sequence[tuple[float, float]]
) -> tuple[float | None, str | None]:
    """Seconds some request awaited its first token while none was decoding, or ``None`` with the reason."""
    started = [t for t in traces if t.events and len(t.events) > 1]
    for t in traces:
        if not t.events:
            continue
        first = t.events[0][0]
        if any(o.events[1][0] < first < o.events[-1][0] for o in started if o is not t):
            return None, "prefill overlapped decode (continuous batching): its time cannot be told apart"
    waits = [(t.origin_ns / NS, t.events[0][0] / NS) for t in traces if t.events and t.origin_ns is not None]
    if not waits:
        return None, "no request has an arrival time"
    # Decode intervals never overlap a wait here (checked above), so the difference is the waits' own time.
    busy = flops_mod.union_s(waits + list(decode)) - flops_mod.union_s(decode)
    return (busy, None) if busy > 0 else (None, "no time was spent awaiting a first token")


def cycle_roofline(
    traces: Sequence[RequestTrace],
    model_info: Mapping[str, Any],
    config: ExperimentConfig,
    flops: Mapping[str, Any],
) -> dict[str, Any]:
    """Decode memory-bandwidth and prefill FLOP utilisation of one cycle, and the decode roofline.

    Decode time is the union of the requests' decode spans (first token to last); its mean concurrency
    (summed spans over that time) is the batch a step serves, so steps = decode tokens / concurrency. The
    bytes of the cycle's decode are steps x weights per step + each decode token's KV cache (see
    :mod:`lem.figures.flops`). Prefill time is the time some request awaited its first token while none
    was decoding; FLOPs are the analytical prefill FLOPs.
    """
    cfg = model_info.get("model_config") or {}
    info = model_info.get("info") or {}
    found = info.get("hardware")
    hw: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    tp = config.sharding.tensor_parallel_size
    precision = compute_precision(config.precision, config.quantization.method)
    limits = peaks(
        hw.get("device_name"), tp, config.hardware, precision, hw.get("copy_bandwidth"), hw.get("device_reason")
    )
    s = flops_mod.shapes(cfg)
    widths = _widths(model_info, config)
    decode = _decode_intervals(traces)
    decode_s = flops_mod.union_s(decode)
    decode_tokens = sum(max(0, sum(n for _, n in t.events) - 1) for t in traces)
    out: dict[str, Any] = {
        "hardware": limits,
        "widths": widths,
        "decode_s": decode_s,
        "decode_tokens": decode_tokens,
        "decode_concurrency": None,
        "decode_steps": None,
        "weight_bytes_per_step": None,
        "weight_bytes_per_step_per_shard": None,
        "decode_bytes": None,
        "achieved_memory_bandwidth_gbs": None,
        "memory_bandwidth_utilization": None,
        "roofline_decode_tokens_per_s": None,
        "decode_arithmetic_intensity": None,
        "decode_flops_per_s": None,
        "prefill_s": None,
        "flops_utilization": None,
        "reason": None,
        "mbu_reason": None,
        "flops_reason": None,
    }
    if s is None:
        out["reason"] = out["mbu_reason"] = out["flops_reason"] = "model config lacks the shapes to count bytes"
        return out
    if not decode_tokens or decode_s <= 0:
        out["reason"] = out["mbu_reason"] = "no decode step: every request produced at most one token"
    else:
        concurrency = sum(b - a for a, b in decode) / decode_s
        steps = decode_tokens / concurrency
        per_step, per_pos = step_bytes(model_info, config, concurrency) or (0.0, 0.0)
        # Decode step k (1..m-1) of a request with n input tokens moves the KV cache of n + k positions.
        positions = 0
        for t in traces:
            m = sum(n for _, n in t.events)
            positions += sum(t.input_tokens + k for k in range(1, m))
        moved = steps * per_step + positions * per_pos
        achieved = moved / decode_s / 1e9
        out.update(
            decode_concurrency=concurrency,
            decode_steps=steps,
            weight_bytes_per_step=per_step,
            weight_bytes_per_step_per_shard=per_step / tp,
            decode_bytes=moved,
            achieved_memory_bandwidth_gbs=achieved,
        )
        if flops.get("decode") is not None:
            out["decode_arithmetic_intensity"] = flops["decode"] / moved
            out["decode_flops_per_s"] = flops["decode"] / decode_s
        peak_bw = limits["peak_memory_bandwidth_gbs"]
        if peak_bw is None:
            out["mbu_reason"] = limits["peak_memory_bandwidth_reason"]
        else:
            out["memory_bandwidth_utilization"] = achieved / (peak_bw * limits["devices"])
            out["roofline_decode_tokens_per_s"] = decode_tokens * peak_bw * limits["devices"] * 1e9 / moved
    prefill_s, why = _prefill_s(traces, decode)
    out["prefill_s"] = prefill_s
    peak_tf = limits["peak_tflops"]
    if flops.get("prefill") is None:
        out["flops_reason"] = flops.get("reason") or "prefill FLOPs unknown"
    elif prefill_s is None:
        out["flops_reason"] = why
    elif peak_tf is None:
        out["flops_reason"] = limits["peak_tflops_reason"]
    else:
        out["flops_utilization"] = flops["prefill"] / prefill_s / (peak_tf * 1e12 * limits["devices"])
    return out
