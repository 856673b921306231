"""Campaigns on a real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster: one head and worker
nodes, each a raylet of its own), running the scripted test backend in real ``lem.campaign.worker`` processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import lem.testing.scripted as scripted
from lem.campaign.loop import CampaignOptions, run_campaign
from lem.campaign.ray_executor import RayOptions, task_options
from lem.configfile.loading import LoadedFile
from lem.plugins import backend_names

ray = pytest.importorskip("ray")

FAST = {
    "dataset": {"num_prompts": 2, "input_length": 4},
    "generation": {"max_output_tokens": 4},
    "measurement": {"cycles": 2, "idle_seconds": 0.0, "energy_meter": "none", "warmup_requests": 0},
    "scripted": {"itl_ms": 20.0},
}


def _exp(exp_id: str, cycles: int = 2, **scripted_opts: Any) -> Any:
    tables = {**FAST, "scripted": {**FAST["scripted"], **scripted_opts}}
    tables["measurement"] = {**FAST["measurement"], "cycles": cycles}
    return scripted.experiment(tables, exp_id=exp_id)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A head that runs nothing (0 CPUs) and two worker nodes of one CPU each, labelled a and b."""
    from ray.cluster_utils import Cluster

    # The nodes' workers inherit this environment: built-in architectures go to a temporary cache, no hub.
    mp = pytest.MonkeyPatch()
    mp.setenv("LEM_CACHE_DIR", str(tmp_path_factory.mktemp("lem-cache")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    # Every node, driver and worker on 127.0.0.1: Ray otherwise binds to the machine's own address. This is
    # Ray's single-machine mode (its default on macOS and Windows); the cluster's processes read the variable,
    # this already-imported Ray the constant.
    mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    mp.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    # A dead node is noticed within ~2 s (the default takes ~30 s).
    fast_health = {"health_check_period_ms": 500, "health_check_failure_threshold": 4, "health_check_timeout_ms": 500}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": fast_health})
    c.add_node(num_cpus=1, labels={"lem-node": "a"})
    c.add_node(num_cpus=1, labels={"lem-node": "b"})
    c.wait_for_nodes()
    ray.init(address=c.address)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        mp.undo()


# The scripted backend, registered for each test: a module plugin travels to the Ray task, and on to its
# worker, by name (lem.campaign.job.carried_plugins).
pytestmark = pytest.mark.usefixtures("scripted_backend")


def _node_of(exp_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((exp_dir / "environment.json").read_text())["ray"]
    return doc


def test_task_options_map_resources_pins_and_environments() -> None:
    exp = scripted.experiment({"sharding": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}})
    opts = RayOptions(num_cpus=4, memory_gb=2, resources={"H100": 1}, labels={"gpu": "h100"}, max_retries=2)
    got = task_options(exp, opts, {"scripted": "/envs/s/bin/python"})
    assert got["num_gpus"] == 4 and got["num_cpus"] == 4 and got["memory"] == 2 * 2**30
    assert got["resources"] == {"H100": 1} and got["label_selector"] == {"gpu": "h100"}
    assert got["max_retries"] == 2 and got["runtime_env"] == {"py_executable": "/envs/s/bin/python"}
    cpu = scripted.experiment({"scripted": {"device": "cpu"}})
    assert task_options(cpu, RayOptions(), {})["num_gpus"] == 0  # the backend's table says CPU
    assert task_options(exp, RayOptions(), {}, cluster_has_gpus=False)["num_gpus"] == 0
    assert task_options(exp, RayOptions(num_gpus=1), {})["num_gpus"] == 1
    assert "runtime_env" not in task_options(exp, RayOptions(), {"vllm": "/x"})


def test_a_sweep_spreads_over_two_nodes_with_the_local_layout(cluster: Any, tmp_path: Path) -> None:
    exps = (_exp("one"), _exp("two"))
    ok = run_campaign(
        LoadedFile("t.toml", exps, ()), CampaignOptions(out_dir=tmp_path / "ray", quiet=True, ray=RayOptions())
    )
    assert ok is True
    (run_dir,) = (tmp_path / "ray").iterdir()
    nodes = {_node_of(run_dir / e.id)["node_id"] for e in exps}
    workers = {n.node_id for n in cluster.worker_nodes}
    assert nodes == workers  # one CPU per node, one CPU per task: both nodes ran one experiment at once
    assert cluster.address.startswith("127.0.0.1:") and _node_of(run_dir / "one")["node_ip"] == "127.0.0.1"
    # The same files as a local run of the same experiments.
    assert run_campaign(
        LoadedFile("t.toml", exps[:1], ()), CampaignOptions(out_dir=tmp_path / "local", quiet=True, report=False)
    )
    (local_dir,) = (tmp_path / "local").iterdir()
    assert sorted(p.name for p in (run_dir / "one").iterdir()) == sorted(p.name for p in (local_dir / "one").iterdir())
    summary = json.loads((run_dir / "two" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["cycles"] == 2
    assert (run_dir / "report.html").exists()


DRIVER = """
import sys
import lem.testing.scripted as scripted
from lem.campaign.loop import CampaignOptions, run_campaign
from lem.campaign.ray_executor import RayOptions
from lem.configfile.loading import LoadedFile
from lem.testing import registered

sys.path.insert(0, sys.argv[3])
from test_ray_campaign import _exp

exps = (_exp("quick", cycles=1), _exp("slow", cycles=int(sys.argv[4]), itl_ms=50.0))
with registered(scripted, "scripted"):
    # Shared: the test sees the cycles of the experiment the Ctrl-C stops.
    opts = RayOptions(address=sys.argv[2], shared_out=True)
    run_campaign(
        LoadedFile("t.toml", exps, ()),
        CampaignOptions(
            out_dir=sys.argv[1], quiet=True, ray=opts, resume_id=sys.argv[5] if len(sys.argv) > 5 else None
        ),
    )
"""


def test_ctrl_c_cancels_the_tasks_and_a_resume_finishes_the_campaign(cluster: Any, tmp_path: Path) -> None:
    here = str(Path(__file__).parent)
    cmd = [sys.executable, "-c", textwrap.dedent(DRIVER), str(tmp_path), cluster.address, here, "12"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (list(tmp_path.glob("*/quick/summary.json")) and list(tmp_path.glob("*/slow/cycle-002.json"))):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr and proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # Ctrl-C on the driver while "slow" is measuring (12 cycles of ~0.3 s)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "interrupted: Ray tasks cancelled (experiments slow)" in err
    (run_dir,) = tmp_path.iterdir()
    # The cancelled task stopped its worker mid-experiment: the driver (which waits for cancelled tasks to end)
    # exited before the 12 cycles were measured, and no cycle comes after it.
    written = sorted((run_dir / "slow").glob("cycle-*.json"))
    assert 2 <= len(written) < 12
    time.sleep(1.0)
    assert sorted((run_dir / "slow").glob("cycle-*.json")) == written
    assert (run_dir / "slow" / "interrupted.json").exists() and not (run_dir / "slow" / "summary.json").exists()
    quick = (run_dir / "quick" / "summary.json").stat().st_mtime_ns
    # The resume skips the finished experiment and runs the other one.
    resumed = subprocess.run([*cmd, run_dir.name], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "quick" / "summary.json").stat().st_mtime_ns == quick
    assert json.loads((run_dir / "slow" / "summary.json").read_text())["cycles"] == 12
    assert not (run_dir / "slow" / "interrupted.json").exists()


def test_a_killed_node_is_retried_elsewhere_without_mixing_attempts(cluster: Any, tmp_path: Path) -> None:
    victim = cluster.add_node(num_cpus=1, resources={"victim": 1.0})
    try:
        # The experiment must start on the victim: the other nodes are kept busy until it has.
        cluster.wait_for_nodes()
        exp = _exp("long", cycles=5, itl_ms=60.0)
        opts = RayOptions(shared_out=True, max_retries=1)  # shared: the first attempt's cycles are visible here
        import threading

        box: dict[str, Any] = {}
        blockers = [_blocker.options(label_selector={"lem-node": n}).remote(6.0) for n in ("a", "b")]
        thread = threading.Thread(
            target=lambda: box.update(
                ok=run_campaign(
                    LoadedFile("t.toml", (exp,), ()), CampaignOptions(out_dir=tmp_path, quiet=True, ray=opts)
                )
            )
        )
        thread.start()
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("*/long/cycle-002.json")):
            assert time.monotonic() < deadline, "the first attempt never reached cycle 2"
            time.sleep(0.05)
        (exp_dir,) = tmp_path.glob("*/long")
        first = (exp_dir / "cycle-001.json").read_text()
        assert _node_of_task_dir(exp_dir) is None  # environment.json gets its node only when the task ends
        cluster.remove_node(victim, allow_graceful=False)
        thread.join(120)
        ray.get(blockers)
    finally:
        if victim in cluster.worker_nodes:
            cluster.remove_node(victim)
    assert box.get("ok") is True
    assert _node_of(exp_dir)["node_id"] != victim.node_id
    cycles = sorted(exp_dir.glob("cycle-*.json"))
    assert [p.name for p in cycles] == [f"cycle-00{i}.json" for i in range(1, 6)]
    assert (exp_dir / "cycle-001.json").read_text() != first  # every cycle is the second attempt's
    assert not (exp_dir / "failure.json").exists()


@ray.remote(num_cpus=1)
def _blocker(seconds: float) -> None:
    time.sleep(seconds)


def _node_of_task_dir(exp_dir: Path) -> Any:
    path = exp_dir / "environment.json"
    return json.loads(path.read_text()).get("ray") if path.exists() else None


def test_gpus_are_tensor_times_pipeline_parallel_and_an_impossible_request_fails_at_once(
    cluster: Any, tmp_path: Path
) -> None:
    """Ray's GPUs here are logical (a node started with num_gpus=2, no hardware): Ray still places the task on
    that node and sets CUDA_VISIBLE_DEVICES for it, which the worker's environment.json records."""
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=2)
    try:
        cluster.wait_for_nodes()
        two = _exp("tp2", cycles=1)
        two = attrs.evolve(two, config=attrs.evolve(two.config, sharding=attrs.evolve(
            two.config.sharding, tensor_parallel_size=2)))  # fmt: skip
        four = attrs.evolve(two, id="tp2pp2", config=attrs.evolve(two.config, sharding=attrs.evolve(
            two.config.sharding, pipeline_parallel_size=2)))  # fmt: skip
        ok = run_campaign(
            LoadedFile("t.toml", (two, four), ()), CampaignOptions(out_dir=tmp_path, quiet=True, ray=RayOptions())
        )
    finally:
        cluster.remove_node(gpu_node)
    assert ok is False
    (run_dir,) = tmp_path.iterdir()
    env = json.loads((run_dir / "tp2" / "environment.json").read_text())
    assert env["ray"]["node_id"] == gpu_node.node_id
    assert sorted(env["cuda"]["cuda_visible_devices"].split(",")) == ["0", "1"]
    failure = json.loads((run_dir / "tp2pp2" / "failure.json").read_text())
    assert failure["reason"] == "needs 4 GPUs on one node; the largest node has 2"


def test_a_worker_that_dies_every_time_is_recorded_after_its_retries(cluster: Any, tmp_path: Path) -> None:
    exps = (_exp("dies", fail="exit"), _exp("fine", cycles=1))
    opts = RayOptions(max_retries=1)
    assert (
        run_campaign(
            LoadedFile("t.toml", exps, ()), CampaignOptions(out_dir=tmp_path, quiet=True, ray=opts, report=False)
        )
        is False
    )
    (run_dir,) = tmp_path.iterdir()
    failure = json.loads((run_dir / "dies" / "failure.json").read_text())
    assert failure["reason"].startswith("worker process exited with status 3") and "(2 attempts)" in failure["reason"]
    assert failure["exit_code"] == 3
    assert json.loads((run_dir / "fine" / "summary.json").read_text())["status"] == "ok"


def _pinned_env(tmp_path: Path) -> Path:
    """A separate virtualenv (its own interpreter and prefix) that sees this environment's packages (ray, lem)."""
    env = tmp_path / "pinned-env"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(env)], check=True)  # type: ignore[attr-defined]
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    Path(purelib, "lem_test_parent.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


PYTORCH = """
model = "random:tiny-llama"
backend = "pytorch"
precision = "float32"

[dataset]
num_prompts = 2
input_length = 8

[generation]
max_output_tokens = 4

[measurement]
cycles = 1
idle_seconds = 0
warmup_requests = 0
energy_meter = "none"

[pytorch]
device = "cpu"
"""


@pytest.mark.skipif("pytorch" not in backend_names(), reason="lem-backend-pytorch is not installed")
def test_lem_run_ray_pins_a_backend_to_a_runtime_environment_and_a_node(cluster: Any, tmp_path: Path) -> None:
    """`lem run --ray ADDRESS --python pytorch=PINNED --ray-label lem-node=b` on the real tiny Llama."""
    python = _pinned_env(tmp_path)
    (tmp_path / "exp.toml").write_text(PYTORCH)
    args = ["run", "exp.toml", "--out", "res", "--ray", cluster.address, "--python", f"pytorch={python}"]
    proc = subprocess.run(
        [sys.executable, "-c", "from lem.cli.main import main; main()", *args, "--ray-label", "lem-node=b"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (exp_dir,) = (p.parent for p in (tmp_path / "res").glob("*/*/experiment.toml"))
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["backend"] == "pytorch" and summary["figures"]["output_tokens_per_s"]["mean"] > 0
    env = json.loads((exp_dir / "environment.json").read_text())
    labels = {n["NodeID"]: n.get("Labels", {}) for n in ray.nodes()}
    assert labels[env["ray"]["node_id"]].get("lem-node") == "b"
    # The task and its worker both ran in the pinned environment's interpreter.
    assert env["ray"]["python"] == str(python) and env["python"]["executable"] == str(python)
    # Progress says where each experiment runs.
    assert "queued on Ray (1 CPU, 0 GPU)" in proc.stderr and f"done on node {env['ray']['node_ip']}" in proc.stderr


def test_without_ray_lem_run_says_how_to_install_it(tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text('model = "random:tiny-llama"\n')
    code = "import sys; sys.modules['ray'] = None; from lem.cli.main import cli; cli(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, "run", str(exp), "--ray"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "lem: --ray: Ray is not installed in this environment: pip install 'lem-core[ray]'"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--ray-resource", "H100"],
            "lem: --ray-resource H100: expected KEY=VALUE (float value), e.g. --ray-resource H100=1",
        ),
        (["--ray-label", "gpu=h100", "--in-process"], None),
    ],
)
def test_bad_ray_options_are_one_line(tmp_path: Path, args: list[str], said: str | None) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text('model = "random:tiny-llama"\n')
    cmd = [sys.executable, "-m", "lem", "run", str(exp), *args] + ([] if said is None else ["--ray"])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    expected = said or "lem: --ray-label needs --ray"
    assert done.returncode == 2 and done.stderr.strip() == expected
