"""What going through Ray costs per experiment: the same experiment run locally and as a Ray task.

    python benchmarks/ray_overhead.py [REPEATS]

Starts a one-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), connects once (as a
campaign's driver does), then times ``run_campaign`` on one short scripted experiment (lem's test
backend in a real worker process) locally and with ``ray=RayOptions()``, alternately. Prints the
median wall time of each and their difference: the per-experiment overhead (task scheduling, a Ray
worker process, returning the files), without the one-off ``ray.init`` of a campaign.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import ray
from ray.cluster_utils import Cluster

import lem.testing.scripted as scripted
from lem.campaign.loop import CampaignOptions, run_campaign
from lem.campaign.ray_executor import RayOptions
from lem.configfile.loading import LoadedFile
from lem.testing import registered

TABLES = {
    "dataset": {"num_prompts": 2, "input_length": 4},
    "generation": {"max_output_tokens": 4},
    "measurement": {"cycles": 2, "idle_seconds": 0.0, "energy_meter": "none", "warmup_requests": 0},
    "scripted": {"itl_ms": 10.0},
}


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    t0 = time.perf_counter()
    ray.init(address=cluster.address)
    print(f"ray.init (once per campaign): {time.perf_counter() - t0:.2f} s")
    loaded = LoadedFile("bench.toml", (scripted.experiment(TABLES),), ())
    times: dict[str, list[float]] = {"local": [], "ray": []}
    try:
        with registered(scripted, "scripted"), tempfile.TemporaryDirectory() as out:
            for _ in range(repeats):
                for kind, opts in (("local", None), ("ray", RayOptions())):
                    start = time.perf_counter()
                    assert run_campaign(
                        loaded, CampaignOptions(out_dir=out, quiet=True, report=False, ray=opts), stdout=sys.stderr
                    )
                    times[kind].append(time.perf_counter() - start)
    finally:
        ray.shutdown()
        cluster.shutdown()
    local, remote = statistics.median(times["local"]), statistics.median(times["ray"])
    for kind, median in (("local", local), ("ray", remote)):
        print(f"{kind}: median {median:.2f} s of", " ".join(f"{t:.2f}" for t in times[kind]))
    print(f"overhead per experiment: {remote - local:+.2f} s")


if __name__ == "__main__":
    main()
