"""The TensorRT engine flow (``[tensorrt] runtime = "tensorrt"``): build, save, cache, reuse, on the FAKE library.

TensorRT-LLM cannot run here (see ``tests/fake/tensorrt_llm/__init__.py``). The
fake's engine-flow ``LLM`` (``tensorrt_llm._tensorrt_engine.LLM``) checks every
argument against the API surface, "builds" when given a checkpoint (logging
``build``), writes a small engine directory on ``save`` and loads a directory it
saved (logging ``load_engine``). Everything else is lem's own code: the option
mapping, the engine cache and its metadata, the build phase metered apart from
the load by the core (with lem-energy-nvml's NVML meter over the fake ``pynvml``
that lem-energy-nvml's own tests use: GPUs are hardware this machine lacks).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import config, read_log, set_compute_capability

from lem_backend_tensorrt import engine_cache, plugin
from lem_energy_nvml.testing import FakeGpu, install


class Phases:
    """Records the phases the backend reports (the core's ``phases`` argument, without a meter)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.names.append(name)
        yield


def engine_config(model: Path, cache: Path, **tensorrt: Any) -> Any:
    return config(
        str(model), tensorrt={"runtime": "tensorrt", "engine_cache_dir": str(cache), "max_batch_size": 8, **tensorrt}
    )


def load(cfg: Any, phases: Phases | None = None) -> dict[str, Any]:
    model = plugin.load_model(backend="tensorrt", config=cfg, phases=phases or Phases())
    assert model is not None
    try:
        return dict(model.info)
    finally:
        model.close()


def events(log: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in read_log(log) if e["event"] == name]


def test_first_run_builds_and_caches_the_second_reuses(tmp_path: Path, tiny_llama: Path, fake_script: Any) -> None:
    log = fake_script()
    cache = tmp_path / "engines"
    phases = Phases()
    info = load(engine_config(tiny_llama, cache), phases)["engine_build"]
    assert phases.names == ["build"] and info["cache"] == "miss"
    [built] = events(log, "build")
    assert built["model"] == str(tiny_llama) and built["build_config"] == {"max_batch_size": 8}
    [saved] = events(log, "save")
    entry = Path(info["path"]).parent
    assert entry.parent == cache and Path(saved["path"]).name == "engine"  # saved in a temporary dir, then moved
    meta = json.loads((entry / engine_cache.METADATA).read_text())
    assert meta["digest"] == info["digest"] and meta["build_s"] >= 0
    assert meta["inputs"]["build_config"] == {"max_batch_size": 8}
    assert meta["inputs"]["gpus"] == [{"name": "Fake GPU", "compute_capability": "9.0"}]
    assert meta["inputs"]["tensorrt_llm"] == "0.0.0+lem.fake" and meta["versions"]["tensorrt_llm"] == "0.0.0+lem.fake"
    # The experiment loaded the saved engine, with the checkpoint's tokenizer.
    [loaded] = events(log, "load_engine")
    assert loaded["model"] == info["path"]
    assert not list(cache.glob(".*"))  # no temporary directory left

    phases = Phases()
    again = load(engine_config(tiny_llama, cache), phases)["engine_build"]
    assert phases.names == [] and again["cache"] == "hit" and again["path"] == info["path"]
    assert again["build"]["built_at"] == meta["built_at"]  # read from the metadata
    assert len(events(log, "build")) == 1 and len(events(log, "load_engine")) == 2


def test_force_rebuild_builds_again_in_place(tmp_path: Path, tiny_llama: Path, fake_script: Any) -> None:
    log = fake_script()
    cache = tmp_path / "engines"
    first = load(engine_config(tiny_llama, cache))["engine_build"]
    phases = Phases()
    rebuilt = load(engine_config(tiny_llama, cache, force_rebuild=True), phases)["engine_build"]
    assert phases.names == ["build"] and rebuilt["cache"] == "rebuilt"
    # force_rebuild is not part of the key: the new engine replaces the old one.
    assert rebuilt["path"] == first["path"] and len(events(log, "build")) == 2
    assert [p.name for p in cache.iterdir()] == [Path(first["path"]).parent.name]


def test_a_different_build_option_or_gpu_gives_a_different_key(
    tmp_path: Path, tiny_llama: Path, fake_script: Any, fake_gpus: list[FakeGpu]
) -> None:
    log = fake_script()
    cache = tmp_path / "engines"
    base = load(engine_config(tiny_llama, cache))["engine_build"]
    other = load(engine_config(tiny_llama, cache, max_batch_size=16))["engine_build"]
    assert other["cache"] == "miss" and other["digest"] != base["digest"]
    typed = load(engine_config(tiny_llama, cache, strongly_typed=False))["engine_build"]
    assert typed["digest"] not in (base["digest"], other["digest"])
    set_compute_capability(fake_gpus, "10.0")  # another GPU generation: its engine is built for it
    blackwell = load(engine_config(tiny_llama, cache))["engine_build"]
    assert blackwell["cache"] == "miss" and blackwell["digest"] != base["digest"]
    assert len(events(log, "build")) == 4 and len(list(cache.iterdir())) == 4


def test_engine_path_is_loaded_as_it_is(tmp_path: Path, tiny_llama: Path, fake_script: Any) -> None:
    log = fake_script()
    built = load(engine_config(tiny_llama, tmp_path / "engines"))["engine_build"]
    phases = Phases()
    cfg = config(str(tiny_llama), tensorrt={"engine_path": built["path"]})
    info = load(cfg, phases)["engine_build"]
    assert info == {"source": "engine_path", "path": built["path"], "build": None, "cache": None}
    assert phases.names == [] and len(events(log, "build")) == 1
    assert events(log, "load_engine")[-1]["model"] == built["path"]


def test_a_build_that_crashes_half_way_is_never_reused(tmp_path: Path, tiny_llama: Path, fake_script: Any) -> None:
    cache = tmp_path / "engines"
    log = fake_script(crash_in_save=True)
    with pytest.raises(RuntimeError, match="crashed while saving"):
        load(engine_config(tiny_llama, cache))
    assert list(cache.iterdir()) == []  # the partial engine went with its temporary directory
    # A process killed mid-build leaves its temporary directory (and, here, an entry without metadata).
    log = fake_script()
    info = load(engine_config(tiny_llama, cache))["engine_build"]
    entry = Path(info["path"]).parent
    leftover = cache / f".{entry.name}.building-killed" / "engine"
    leftover.mkdir(parents=True)
    (leftover / "rank0.engine").write_bytes(b"half")
    (entry / engine_cache.METADATA).unlink()  # as if the metadata had never been written
    again = load(engine_config(tiny_llama, cache))["engine_build"]
    assert again["cache"] == "miss" and len(events(log, "build")) == 3  # the crashed one, then two
    assert json.loads((entry / engine_cache.METADATA).read_text())["digest"] == again["digest"]
    assert not leftover.exists()
    # A build of the same key still running in another process keeps its temporary directory.
    running = cache / f".{entry.name}.building-{os.getppid()}-x"
    running.mkdir()
    load(engine_config(tiny_llama, cache, force_rebuild=True))
    assert running.is_dir()
    running.rmdir()
    # Metadata of another key (a copied directory) is not trusted either.
    meta = json.loads((entry / engine_cache.METADATA).read_text())
    (entry / engine_cache.METADATA).write_text(json.dumps({**meta, "digest": "0" * 64}))
    assert load(engine_config(tiny_llama, cache))["engine_build"]["cache"] == "miss"


def _nvml(monkeypatch: pytest.MonkeyPatch) -> FakeGpu:
    """lem-energy-nvml's fake pynvml over one H100-like board (compute capability 9.0, which the backend reads)."""
    gpu = FakeGpu(uuid="GPU-0")
    install(monkeypatch, [gpu])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return gpu


def test_build_time_and_energy_are_their_own_phase(
    tmp_path: Path, tiny_llama: Path, fake_script: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorrt_llm import _fake

    from lem.campaign.loop import CampaignOptions, run_campaign
    from lem.configfile.loading import Experiment, LoadedFile

    gpu = _nvml(monkeypatch)

    def burn() -> None:  # the build draws 250 J on the fake board's energy counter
        gpu.energy_mj += 250_000

    monkeypatch.setattr(_fake, "ON_BUILD", [burn])
    fake_script(build_s=0.05)
    cfg = config(
        str(tiny_llama),
        dataset={"num_prompts": 2, "input_length": 8},
        measurement={"cycles": 1, "idle_seconds": 0.0, "warmup_requests": 0, "energy_meter": "nvml"},
        tensorrt={"runtime": "tensorrt", "engine_cache_dir": str(tmp_path / "engines")},
    )

    def run(out: Path) -> dict[str, Any]:
        assert run_campaign(
            LoadedFile("exp.toml", (Experiment("exp", cfg),), ()), CampaignOptions(out_dir=out, in_process=True)
        )
        [setup] = out.glob("*/exp/setup.json")
        return dict(json.loads(setup.read_text()))

    setup = run(tmp_path / "first")
    build = setup["load"]["phases"]["build"]
    assert build["duration_s"] >= 0.05
    [dev] = build["energy_window"]["devices"]
    assert (dev["energy_j"], dev["method"]) == (250.0, "counter")
    # The load's own window (before and after the build) saw none of the build's 250 J (the counter did not
    # move there; the meter's figure for such short windows comes from the 125 W power reading instead).
    [load_dev] = setup["load"]["energy_window"]["devices"]
    assert load_dev["energy_j"] is not None and load_dev["energy_j"] < 25.0
    assert setup["model_info"]["info"]["engine_build"]["cache"] == "miss"
    # Second run: the cached engine, no build phase.
    again = run(tmp_path / "second")
    assert again["load"]["phases"] == {} and again["model_info"]["info"]["engine_build"]["cache"] == "hit"


def test_quantization_is_built_into_the_engine_and_part_of_the_key(
    tmp_path: Path, tiny_llama: Path, fake_script: Any
) -> None:
    log = fake_script()
    cache = tmp_path / "engines"
    awq = {"method": "int4_awq", "calibration": {"dataset": "cnn_dailymail", "num_samples": 16, "max_length": 128}}
    first = load(engine_config(tiny_llama, cache, quantization=awq))["engine_build"]
    [built] = events(log, "build")
    assert built["quant_config"] == {"quant_algo": "W4A16_AWQ"}
    assert built["calib_config"] == {
        "calib_batch_size": 1,
        "calib_dataset": "cnn_dailymail",
        "calib_batches": 16,
        "calib_max_seq_length": 128,
    }
    more = {**awq, "calibration": {**awq["calibration"], "num_samples": 64}}
    second = load(engine_config(tiny_llama, cache, quantization=more))["engine_build"]
    plain = load(engine_config(tiny_llama, cache))["engine_build"]
    assert len({first["digest"], second["digest"], plain["digest"]}) == 3


def test_a_checkpoint_quantized_beforehand_is_built_as_it_is(
    tmp_path: Path, tiny_llama: Path, fake_script: Any
) -> None:
    import shutil

    log = fake_script()
    model = tmp_path / "awq-model"
    shutil.copytree(tiny_llama, model)
    (model / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "W4A16_AWQ"}}))
    load(engine_config(model, tmp_path / "engines", quantization={"method": "int4_awq"}))
    [built] = events(log, "build")
    assert built["quant_config"] is None and built["calib_config"] is None
    from lem.errors import BackendError

    with pytest.raises(BackendError, match="expects quant_algo 'FP8'"):
        load(engine_config(model, tmp_path / "engines", quantization={"method": "fp8"}))
