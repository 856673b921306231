"""Gating spoilt cycles: the host-load sampler over a fake /proc tree, and the judgement of cycles."""

from __future__ import annotations

from pathlib import Path

import pytest

from lem.config import MeasurementConfig
from lem.figures.precision import stops_after
from lem.figures.validity import judge, partition
from lem.run.hostload import HostLoad


def _proc(root: Path, user: int, idle: int, steal: int, own: int, load: float) -> None:
    """A fake /proc: 2 CPUs, this process (pid 100) with a child (pid 101) holding half its ticks."""
    root.mkdir(exist_ok=True)
    (root / "stat").write_text(f"cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 0\ncpu1 0\n")
    (root / "loadavg").write_text(f"{load} 0.5 0.5 1/100 101\n")
    for pid, ppid, ticks in ((100, 1, own - own // 2), (101, 100, own // 2), (7, 1, 999)):
        (root / str(pid)).mkdir(exist_ok=True)
        fields = ["S", str(ppid)] + ["0"] * 9 + [str(ticks), "0"] + ["0"] * 10
        (root / str(pid) / "stat").write_text(f"{pid} (a name) " + " ".join(fields) + "\n")


def test_host_load_separates_own_others_and_steal(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    _proc(root, user=1000, idle=1000, steal=0, own=100, load=0.2)
    host = HostLoad(root, pid=100)
    host.start()
    # 1000 ticks pass: 600 busy (of which 200 ours, 100 stolen), 400 idle.
    _proc(root, user=1500, idle=1400, steal=100, own=300, load=3.4)
    block = host.stop()
    assert block["reason"] is None and block["cpus"] == 2
    assert block["busy_share"] == pytest.approx(600 / 1000)
    assert block["own_share"] == pytest.approx(200 / 1000)
    assert block["steal_share"] == pytest.approx(100 / 1000)
    assert block["others_share"] == pytest.approx((600 - 200 - 100) / 1000)
    assert block["load_per_cpu"] == pytest.approx(1.7)


def test_an_unreadable_proc_gives_null_figures_with_the_reason(tmp_path: Path) -> None:
    host = HostLoad(tmp_path / "nowhere", pid=1)
    host.start()
    block = host.stop()
    assert block["others_share"] is None and "cannot read" in block["reason"]


def _block(tps: float, temp: float = 40.0, throttled: float = 0.0, others: float = 0.0) -> dict:
    device = {"device": 0, "start": {"temperature_c": temp}, "throttled_share": throttled, "throttle_samples": {}}
    return {
        "metrics": {"output_tokens_per_s": tps},
        "energy": {"j_per_output_token": 1.0, "thermal": {"devices": [device]}},
        "host": {"others_share": others, "load_per_cpu": 0.1, "steal_share": 0.0},
    }


def test_each_condition_spoils_a_cycle() -> None:
    m = MeasurementConfig()
    blocks = [
        _block(100),
        _block(101),
        _block(100, throttled=0.2),  # throttled in 20% of samples
        _block(100, temp=50),  # 10 °C above the previous cycle's start
        _block(99, temp=50, others=0.6),  # busy host
        _block(40, temp=50),  # throughput outlier against the clean cycles' median
        _block(100, temp=50),
    ]
    verdicts = judge(m, blocks)
    assert [v["valid"] for v in verdicts] == [True, True, False, False, False, False, True]
    assert "throttled" in verdicts[2]["reasons"][0] and "not settled" in verdicts[3]["reasons"][0]
    assert "busy host" in verdicts[4]["reasons"][0] and "outlier" in verdicts[5]["reasons"][0]


def test_invalidate_leaves_out_and_retry_replaces() -> None:
    blocks = [_block(100), _block(100, others=0.9), _block(101)]
    warn = partition(MeasurementConfig(cycles=2), blocks)
    assert warn["included"] == [0, 1, 2] and warn["invalid"] == [1]
    inv = partition(MeasurementConfig(cycles=2, validity="invalidate"), blocks)
    assert inv["counted"] == [0, 1, 2] and inv["included"] == [0, 2] and inv["replaced"] == []
    # invalidate stops after 2 cycles (the spoilt one counts); retry needs a third to replace it.
    assert stops_after(MeasurementConfig(cycles=2, validity="invalidate"), blocks[:2])
    retry = MeasurementConfig(cycles=2, validity="retry", validity_retries=1)
    assert not stops_after(retry, blocks[:2]) and stops_after(retry, blocks)
    # Past the retry limit a spoilt cycle is only left out.
    later = [*blocks, _block(100, others=0.9)]
    parts = partition(MeasurementConfig(cycles=2, validity="retry", validity_retries=1), later)
    assert parts["replaced"] == [1] and parts["counted"] == [0, 2, 3] and parts["included"] == [0, 2]


def test_a_target_on_energy_alone_ignores_throughput_noise() -> None:
    noisy = [
        {"metrics": {"output_tokens_per_s": v}, "energy": {"j_per_output_token": 1.0 + i * 1e-4}, "host": {}}
        for i, v in enumerate((100, 160, 100, 160))
    ]
    both = MeasurementConfig(cycles=2, target_rel_ci=0.01, max_throughput_deviation=10)
    energy = MeasurementConfig(
        cycles=2, target_rel_ci=0.01, max_throughput_deviation=10, target_figures=("energy.j_per_output_token",)
    )
    assert not stops_after(both, noisy[:3]) and stops_after(energy, noisy[:3])
