"""The GGUF conversion as the load's own ``convert`` phase (lem.phases), on the real llama.cpp and a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from llamacpp_helpers import make_config

from lem.campaign.loop import CampaignOptions, run_campaign
from lem.configfile.loading import Experiment, LoadedFile


def _setup(out: Path, cache: Path) -> dict:
    config = make_config(
        "random:tiny-llama",
        dataset={"num_prompts": 2, "input_length": 8},
        measurement={"cycles": 1, "idle_seconds": 0.0, "warmup_requests": 0, "energy_meter": "none"},
        llamacpp={"cache_dir": str(cache)},
    )
    assert run_campaign(
        LoadedFile("exp.toml", (Experiment("exp", config),), ()), CampaignOptions(out_dir=out, in_process=True)
    )
    [path] = out.glob("*/exp/setup.json")
    return dict(json.loads(path.read_text()))


def test_conversion_is_a_phase_of_its_own(tmp_path: Path) -> None:
    first = _setup(tmp_path / "first", tmp_path / "cache")
    phase = first["load"]["phases"]["convert"]
    conversion = first["model_info"]["info"]["conversion"]
    assert conversion["cached"] is False
    assert phase["duration_s"] >= conversion["seconds"] > 0
    assert phase["energy_window"] is None and phase["energy_reason"].startswith("energy metering is off")
    # From the cache: the phase is the lookup only.
    again = _setup(tmp_path / "second", tmp_path / "cache")
    assert again["model_info"]["info"]["conversion"]["cached"] is True
    assert again["load"]["phases"]["convert"]["duration_s"] < phase["duration_s"]
