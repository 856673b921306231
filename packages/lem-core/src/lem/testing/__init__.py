"""Helpers for testing lem and lem plugins (the pytest plugin lives in :mod:`lem.testing.pytest_plugin`).

- :func:`registered` registers a plugin object or module for the duration of a ``with`` block;
- :func:`run_experiments` runs experiments as one campaign (in this process by default) and returns
  a :class:`CampaignRun`: whether all succeeded, and the run directory;
- :func:`build_tiny_model` saves a real tiny random-weight model offline;
- :mod:`lem.testing.scripted` is a backend and meter with exact, scripted timings.

The pytest plugin turns these into fixtures (``run_scripted``, ``tiny_llama``, ``tiny_gpt2``).
Nothing here is a user-facing backend.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lem.architectures import materialize
from lem.campaign.loop import CampaignOptions, run_campaign
from lem.configfile.loading import Experiment, LoadedFile
from lem.plugins import get_plugin_manager
from lem.testing import scripted
from lem.types import Problem


def build_tiny_model(dest: str | Path, name: str = "tiny-llama", seed: int = 0) -> Path:
    """Save a real, tiny, random-weight model (float32) with its tokenizer to ``dest``.

    Deterministic for a given ``seed``. Needs torch and transformers.
    """
    # torch and transformers are optional for lem-core: imported only when a model is built.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dest = Path(dest)
    if (dest / "config.json").exists() and any(dest.glob("*.safetensors")):
        return dest
    materialize(name, dest)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(dest)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(dest)
    return dest


@contextlib.contextmanager
def registered(plugin: Any, name: str) -> Iterator[Any]:
    """Register ``plugin`` on the lem plugin manager for the duration of a ``with`` block."""
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        pm.unregister(name=name)


@attrs.frozen
class CampaignRun:
    """One campaign run by :func:`run_experiments`: did every experiment succeed, and where are its files."""

    ok: bool
    run_dir: Path

    def experiment_dir(self, exp_id: str = "exp") -> Path:
        """The directory of the experiment ``exp_id`` (``"exp"``: the id a lone experiment gets)."""
        return self.run_dir / exp_id

    def failures(self) -> dict[str, str]:
        """``{experiment id: reason}`` of every experiment that wrote a ``failure.json``."""
        return {
            p.parent.name: str(json.loads(p.read_text()).get("reason"))
            for p in sorted(self.run_dir.glob("*/failure.json"))
        }


def run_experiments(
    out_dir: str | Path,
    experiments: Sequence[Experiment],
    *,
    warnings: Sequence[Problem] = (),
    source: str = "test.toml",
    **options: Any,
) -> CampaignRun:
    """Run ``experiments`` as one campaign under ``out_dir``, as ``lem run`` would, and return it.

    ``options`` are :class:`lem.campaign.loop.CampaignOptions` fields; by default the experiments run in
    this process (``in_process=True``: registered plugin objects are seen, breakpoints work) and
    quietly (``quiet=True``). ``source`` and ``warnings`` stand for the experiment file.
    """
    out = Path(out_dir)
    before = set(out.iterdir()) if out.is_dir() else set()
    options.setdefault("in_process", True)
    options.setdefault("quiet", True)
    ok = run_campaign(LoadedFile(source, tuple(experiments), tuple(warnings)), CampaignOptions(out_dir=out, **options))
    made = [p for p in out.iterdir() if p.is_dir() and p not in before]
    if options.get("resume_id"):
        made = [out / str(options["resume_id"])]
    (run_dir,) = made
    return CampaignRun(ok, run_dir)


@attrs.frozen
class ScriptedRunner:
    """Runs experiments on the scripted backend (:mod:`lem.testing.scripted`); the ``run_scripted`` fixture.

    Call it with experiments, or with TOML-shaped tables for :func:`lem.testing.scripted.experiment`
    (a lone one gets the id ``"exp"``, several ``"e0"``, ``"e1"``...). Each call is a new run under
    ``out_dir``. With ``check`` (the default) a failed experiment fails the test with its reason.
    The scripted backend must be registered (the fixture does it for the test; elsewhere
    ``with registered(scripted, "scripted"):``).
    """

    out_dir: Path

    def __call__(
        self,
        *experiments: Experiment | Mapping[str, Any],
        check: bool = True,
        out_dir: str | Path | None = None,
        **options: Any,
    ) -> CampaignRun:
        """Run ``experiments`` (see the class); ``options`` as for :func:`run_experiments`."""
        single = len(experiments) == 1
        exps = [
            e if isinstance(e, Experiment) else scripted.experiment(dict(e), exp_id="exp" if single else f"e{i}")
            for i, e in enumerate(experiments)
        ]
        run = run_experiments(self.out_dir if out_dir is None else out_dir, exps, **options)
        if check and not run.ok:
            raise AssertionError(f"the scripted campaign failed: {run.failures() or 'no failure.json'}")
        return run
