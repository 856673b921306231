"""The NVML meter on a real NVIDIA GPU (needs torch with CUDA; run with ``-m gpu -s`` to see the figures).

Each test prints one ``NVML-GPU ...`` line with its figures and records them
with ``record_property`` (they show in ``--junitxml``). Each takes < ~30 s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lem_energy_nvml.meter import NvmlMeter, idle_power_w
from lem_energy_nvml.plugin import open_meter
from lem_energy_nvml.sampler import integrate

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)


def report(record_property: Callable[[str, Any], None], test: str, **figures: Any) -> None:
    """Print the figures (for ``-s``) and attach them to the test report."""
    print(f"\nNVML-GPU {test}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    for key, value in figures.items():
        record_property(key, value)


@pytest.fixture(scope="module")
def matrices() -> tuple[Any, Any]:
    torch.cuda.init()
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    return a, b


@pytest.fixture
def meter() -> Iterator[NvmlMeter]:
    m = open_meter([0], 100.0)  # the default sampling interval, as shipped
    yield m
    m.close()


def matmul_for(a: Any, b: Any, seconds: float) -> int:
    """Keep the GPU busy with bf16 matmuls for about ``seconds``; returns how many ran."""
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(8):
            a @ b
        n += 8
        torch.cuda.synchronize()
    return n


def test_counter_agrees_with_integrated_instant_power(matrices, meter, record_property):
    a, b = matrices
    matmul_for(a, b, 0.5)  # clocks and power up to their loaded state before the window
    torch.cuda.synchronize()
    meter.start()
    matmul_for(a, b, 3.5)
    torch.cuda.synchronize()
    window = meter.stop()
    (dev,) = window.devices
    series = [(r["t_s"], r["power_w"]) for r in window.timeline if r["power_w"] is not None]
    integral = integrate(series)
    assert dev.method == "counter" and dev.energy_j is not None and integral is not None
    diff = abs(dev.energy_j - integral) / dev.energy_j
    report(
        record_property,
        "counter-vs-integral",
        duration_s=round(window.duration_s, 3),
        counter_j=round(dev.energy_j, 1),
        integral_j=round(integral, 1),
        rel_diff_pct=round(100 * diff, 2),
        mean_w=round(dev.mean_power_w or 0, 1),
        peak_w=dev.peak_power_w,
        samples=len(series),
        power_source=window.timeline[0]["power_source"],
    )
    assert dev.mean_power_w and dev.mean_power_w > 200, "the matmul load should draw well above idle"
    assert diff < 0.05


def test_idle_power_is_stable(matrices, meter, record_property):
    # A CUDA context is open (matrices); let the GPU settle after any load from the previous test.
    torch.cuda.synchronize()
    time.sleep(3.0)
    watts = [idle_power_w(meter, 5.0) for _ in range(3)]
    assert all(w is not None for w in watts)
    spread = max(watts) - min(watts)  # type: ignore[type-var, operator]
    report(record_property, "idle-stability", idle_w=[round(w, 2) for w in watts], spread_w=round(spread, 2))
    assert spread < 5.0


def _timed(work: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def on_off_medians(meter: NvmlMeter, work: Callable[[], None], pairs: int) -> dict[str, float]:
    """Median time of ``work`` with a meter window open (sampler running) and without, interleaved."""
    work()  # warm-up
    on: list[float] = []
    off: list[float] = []
    for i in range(pairs):
        # Alternate which goes first so a slow drift (clocks, temperature) hits both alike.
        for sampled in (True, False) if i % 2 == 0 else (False, True):
            if sampled:
                meter.start()
                on.append(_timed(work))
                meter.stop()
            else:
                off.append(_timed(work))
    return {
        "median_on_s": round(statistics.median(on), 5),
        "median_off_s": round(statistics.median(off), 5),
        "ratio": round(statistics.median(on) / statistics.median(off), 5),
        "stdev_off_pct": round(100 * statistics.stdev(off) / statistics.mean(off), 3),
        "pairs": pairs,
    }


def test_sampler_does_not_slow_the_work(meter, record_property):
    # A memory-bound copy, like LLM decoding. Power-capped matmuls would be the wrong yardstick:
    # their clocks wander with the power cap (~0.6 % run to run), hiding a 0.5 % effect, while a copy
    # repeats to ~0.02 %. benchmarks/nvml_sampler_overhead.py also times matmul and launch-bound loads.
    src = torch.empty(1024**3, dtype=torch.bfloat16, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)

    def copies() -> None:
        for _ in range(500):  # ~0.7 s on an H100
            dst.copy_(src)

    figures = on_off_medians(meter, copies, pairs=8)
    report(record_property, "sampler-overhead", **figures)
    assert abs(figures["ratio"] - 1) < 0.005
