"""How long `lem --help` takes, next to a bare `python -c pass`, measured side by side.

Target: under 0.3 s on a developer machine (lem-core must not import torch,
transformers, vllm or pynvml to print help).

    python benchmarks/cli_startup.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    bare, lem = [], []
    for _ in range(args.repeats):  # interleaved, so drift affects both alike
        bare.append(wall([sys.executable, "-c", "pass"]))
        lem.append(wall([sys.executable, "-m", "lem", "--help"]))
    b, h = statistics.median(bare), statistics.median(lem)
    print(f"python -c pass : median {b * 1000:7.1f} ms")
    print(f"lem --help     : median {h * 1000:7.1f} ms  (target < 300 ms)")
    print(f"ratio lem/python: {h / b:.2f}x; lem's own import cost {1000 * (h - b):.1f} ms")


if __name__ == "__main__":
    main()
