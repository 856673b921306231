"""Every hook: calling convention, firstresult semantics, and its documentation (datasette-style meta-test)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from lem import hookspecs
from lem.config import ExperimentConfig, GenerationConfig
from lem.hookspecs import hookimpl
from lem.phases import unmetered
from lem.plugins import get_plugin_manager
from lem.testing import registered
from lem.types import LoadedModel, Request, TokenEvent, error

DOCS = Path(__file__).resolve().parents[3] / "docs" / "plugins.md"
HOOKS = [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "lem_spec")]
CONFIG = ExperimentConfig(model="m")


def test_the_design_hooks_exist():
    assert {"load_model", "generate_stream", "measure_energy", "validate_config"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    signature = inspect.signature(getattr(hookspecs, hook))
    params = ", ".join(signature.parameters)
    assert f"### `{hook}({params})`" in DOCS.read_text(), f"docs/plugins.md needs a heading for {hook}({params})"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    source = Path(__file__).read_text()
    assert re.search(rf"^def test_hook_{hook}\b", source, re.M)


class Other:
    """A plugin that declines everything (returns None), like a backend asked about another backend."""

    @hookimpl
    def load_model(self, backend, config):
        return None

    @hookimpl
    def generate_stream(self, model, requests, params, config):
        return None


class Mine:
    @hookimpl
    def load_model(self, backend, config):
        return LoadedModel(backend="mine", handle=object()) if backend == "mine" else None

    @hookimpl
    def generate_stream(self, model, requests):  # fewer arguments than the spec is allowed
        if model.backend != "mine":
            return None
        return iter([TokenEvent(r.id, 1, 1, finished=True) for r in requests])


def test_hook_load_model():
    hook = get_plugin_manager().hook
    with registered(Other(), "other"), registered(Mine(), "mine"):
        loaded = hook.load_model(backend="mine", config=CONFIG, phases=unmetered())
        assert loaded.backend == "mine"
        assert hook.load_model(backend="nobody", config=CONFIG, phases=unmetered()) is None


def test_hook_generate_stream():
    hook = get_plugin_manager().hook
    model = LoadedModel(backend="mine", handle=None)
    requests = [Request(id=i, prompt="p", input_tokens=1) for i in range(3)]
    with registered(Other(), "other"), registered(Mine(), "mine"):
        events = hook.generate_stream(model=model, requests=requests, params=GenerationConfig(), config=CONFIG)
        assert [e.request_id for e in events] == [0, 1, 2]
        foreign = LoadedModel(backend="foreign", handle=None)
        assert hook.generate_stream(model=foreign, requests=requests, params=GenerationConfig(), config=CONFIG) is None


def test_hook_measure_energy():
    class Meter:
        name = "m1"

    class Plugin:
        @hookimpl
        def measure_energy(self, meter, devices):
            return Meter() if meter in ("m1", "auto") else None

    hook = get_plugin_manager().hook
    with registered(Plugin(), "m1"):
        assert hook.measure_energy(meter="m1", devices=[0], config=CONFIG).name == "m1"
        assert hook.measure_energy(meter="m2", devices=[0], config=CONFIG) is None


def test_hook_validate_config():
    class Plugin:
        @hookimpl
        def validate_config(self, config):
            return [error("mine.knob", "is wrong")] if config.options_for("mine") else []

    hook = get_plugin_manager().hook
    with registered(Plugin(), "mine"):
        config = ExperimentConfig(model="m", backend_options={"mine": {"knob": 1}})
        found = [p for problems in hook.validate_config(config=config) for p in problems]
        assert error("mine.knob", "is wrong") in found


def test_hook_register_presets():
    class Plugin:
        @hookimpl
        def register_presets(self):
            return {"mine-fast": {"batching": {"batch_size": 2}}}

    from lem.configfile.loading import presets

    with registered(Plugin(), "mine"):
        assert presets()["mine-fast"] == {"batching": {"batch_size": 2}}
        assert "quick-test" in presets()
    assert "mine-fast" not in presets()


def test_hook_register_scorers():
    from lem.config import QualityConfig
    from lem.figures.quality import score, scorers

    class Plugin:
        @hookimpl
        def register_scorers(self):
            return {"mine-length": lambda output, reference, quality: len(output.split()) == int(reference)}

    quality = QualityConfig(scorer="mine-length")
    assert "mine-length" not in scorers()
    with registered(Plugin(), "mine"):
        assert {"exact", "contains", "number", "choice", "regex", "mine-length"} <= set(scorers())
        assert score("two words", "2", None, quality) == (True, None)
        assert score("three words here", "2", None, quality) == (False, None)
    assert "mine-length" not in scorers()
    verdict, reason = score("two words", "2", None, quality)
    assert verdict is None and "not installed" in str(reason)
