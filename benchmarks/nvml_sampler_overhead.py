"""How much the NVML sampler slows GPU work: the sampler-on / sampler-off time ratio.

Runs fixed workloads alternately inside an open NVML meter window (sampler
thread running) and without one, and prints the median times and their ratio
side by side:

- ``copy``: 2 GiB device-to-device copies (memory-bound, like LLM decoding;
  repeats to ~0.02 % on an H100, so it resolves a 0.5 % effect),
- ``matmul``: 8192^2 bf16 matmuls (compute-bound at the power cap; the clocks
  wander with the cap, ~0.6 % run to run),
- ``launch``: many small kernels launched from Python (launch-bound, like
  batch-1 decoding with eager kernels; the launching thread needs the GIL for
  each launch, so this is where a sampler thread could interfere; run-to-run
  noise is several %, so only a gross effect would show).

Needs torch with CUDA plus lem-core and lem-energy-nvml installed (or
``PYTHONPATH=packages/lem-core/src:packages/lem-energy-nvml/src``)::

    python benchmarks/nvml_sampler_overhead.py --interval-ms 100 --pairs 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from lem_energy_nvml.plugin import open_meter


def workloads(copies: int, matmuls: int, launches: int) -> dict[str, Callable[[], None]]:
    """The measured workloads, by name."""
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    small = torch.randn(1024, 1024, dtype=torch.bfloat16, device="cuda")
    src = torch.empty(1024**3, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)

    def copy() -> None:
        for _ in range(copies):
            dst.copy_(src)

    def matmul() -> None:
        for _ in range(matmuls):
            a @ a

    def launch() -> None:
        x = small
        for _ in range(launches):
            x = torch.tanh(x @ small)

    return {"copy": copy, "matmul": matmul, "launch": launch}


def timed(work: Callable[[], None]) -> float:
    """Wall time of ``work`` with the GPU synchronized on both sides."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(meter, work: Callable[[], None], pairs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Interleaved on/off runs of ``work``; medians, ratio and spreads."""
    work()  # warm-up: kernels loaded, clocks up
    on: list[float] = []
    off: list[float] = []
    samples = 0
    for i in range(pairs):
        # Alternate the order inside each pair so slow drifts (clocks, temperature) hit both sides alike.
        for sampled in (True, False) if i % 2 == 0 else (False, True):
            if sampled:
                meter.start()
                on.append(timed(work))
                samples += len(meter.stop().timeline)
            else:
                off.append(timed(work))
    return {
        "median_on_s": statistics.median(on),
        "median_off_s": statistics.median(off),
        "ratio_on_off": statistics.median(on) / statistics.median(off),
        "stdev_on_pct": 100 * statistics.stdev(on) / statistics.mean(on),
        "stdev_off_pct": 100 * statistics.stdev(off) / statistics.mean(off),
        "samples_per_window": samples / len(on),
    }


def main() -> None:
    """Measure and print the sampler-on/off ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval-ms", type=float, default=100.0, help="sampling interval (default 100)")
    parser.add_argument("--pairs", type=int, default=10, help="on/off pairs per workload (default 10)")
    parser.add_argument("--workload", choices=["copy", "matmul", "launch", "all"], default="all")
    parser.add_argument("--copies", type=int, default=500, help="copy workload: 2 GiB copies per run")
    parser.add_argument("--matmuls", type=int, default=500, help="matmul workload: 8192^2 bf16 matmuls per run")
    parser.add_argument("--launches", type=int, default=10000, help="launch workload: small matmul+tanh per run")
    parser.add_argument("--device", type=int, default=0, help="CUDA ordinal")
    args = parser.parse_args()

    torch.cuda.set_device(args.device)
    chosen = workloads(args.copies, args.matmuls, args.launches)
    names = list(chosen) if args.workload == "all" else [args.workload]
    meter = open_meter([args.device], args.interval_ms)
    try:
        results = {name: compare(meter, chosen[name], args.pairs) for name in names}
    finally:
        meter.close()
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(args.device),
                "interval_ms": args.interval_ms,
                "pairs": args.pairs,
                "results": results,
            },
            indent=2,
        )
    )
    for name, r in results.items():
        print(
            f"{name:>6}: sampler on/off time ratio {r['ratio_on_off']:.5f} "
            f"(on {r['median_on_s']:.4f} s, off {r['median_off_s']:.4f} s, "
            f"run-to-run stdev {r['stdev_off_pct']:.2f} %, interval {args.interval_ms:g} ms)"
        )


if __name__ == "__main__":
    main()
