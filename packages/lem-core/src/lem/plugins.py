"""The one plugin manager: built-in plugins plus entry points in group ``lem``.

Entry points are loaded once, on first use (``lem --help`` loads none). The
entry point's name is the plugin's name, which is the backend or meter name
users write in their config. ``LEM_PLUGINS=a,b`` loads only those entry
points (an empty value loads none). A plugin that fails to import is recorded
in :data:`broken` and the rest still load; a plugin implementing a hook that
does not exist fails loudly.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata
from typing import Any

import attrs
import pluggy

from lem import hookspecs
from lem.errors import PluginError

ENTRY_POINT_GROUP = "lem"

#: Built-in plugins: modules inside lem-core registered like any other plugin.
DEFAULT_PLUGINS = ("lem.configfile.validation", "lem.configfile.presets", "lem.figures.quality")

#: Backends and meters the project publishes, so a config naming one that is
#: not installed can say which distribution to install.
KNOWN_DISTRIBUTIONS = {
    "pytorch": "lem-backend-pytorch",
    "vllm": "lem-backend-vllm",
    "tensorrt": "lem-backend-tensorrt",
    "llamacpp": "lem-backend-llamacpp",
    "server": "lem-backend-server",
    "nvml": "lem-energy-nvml",
    "rapl": "lem-energy-rapl",
    "codecarbon": "lem-energy-codecarbon",
}


@attrs.frozen
class BrokenPlugin:
    """An entry point that could not be loaded."""

    name: str
    distribution: str
    error: str


pm = pluggy.PluginManager("lem")
pm.add_hookspecs(hookspecs)

broken: list[BrokenPlugin] = []
_loaded = False


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager with every plugin loaded (loads them on first call)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module_name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(module_name), name=module_name)
        _load_entry_points()
        _check_hook_names()
    return pm


def _check_hook_names() -> None:
    # A hookimpl whose name matches no hookspec is a typo in a plugin: fail loudly, as pytest does.
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or "?"
        known = ", ".join(sorted(n for n in dir(hookspecs) if hasattr(getattr(pm.hook, n, None), "spec")))
        raise PluginError(
            f"plugin '{name}' ({_dists.get(name, 'built-in')}): {exc} (known hooks: {known}; "
            f"fix the plugin or exclude it with LEM_PLUGINS)"
        ) from None


def _allowed() -> set[str] | None:
    raw = os.environ.get("LEM_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _load_entry_points() -> None:
    allowed = _allowed()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        dist = ep.dist.name if ep.dist is not None else "?"
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            broken.append(BrokenPlugin(ep.name, dist, f"{type(exc).__name__}: {exc}"))
            continue
        pm.register(plugin, name=ep.name)
        _dists[ep.name] = dist


_dists: dict[str, str] = {}


def plugin_names() -> list[str]:
    """Names of the loaded entry-point plugins (backends and meters), sorted."""
    get_plugin_manager()
    return sorted(_dists)


def names_implementing(hook: str) -> list[str]:
    """Loaded entry-point plugins that implement ``hook`` (``load_model``: backends)."""
    manager = get_plugin_manager()
    return [
        name
        for name in plugin_names()
        if any(impl.plugin_name == name for impl in getattr(manager.hook, hook).get_hookimpls())
    ]


def backend_names() -> list[str]:
    """Installed backends: plugins implementing ``load_model``."""
    return names_implementing("load_model")


def meter_names() -> list[str]:
    """Installed energy meters: plugins implementing ``measure_energy``."""
    return names_implementing("measure_energy")


def distribution_of(name: str) -> str | None:
    """The distribution that provides plugin ``name``, if it is loaded."""
    get_plugin_manager()
    return _dists.get(name)


def describe_plugins() -> list[dict[str, Any]]:
    """What ``lem plugins`` prints: each loaded plugin's name, distribution, version and hooks."""
    manager = get_plugin_manager()
    rows: list[dict[str, Any]] = []
    for name in plugin_names():
        plugin = manager.get_plugin(name)
        dist = _dists[name]
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = None
        hooks = sorted(h.name for h in manager.get_hookcallers(plugin) or [])
        rows.append({"name": name, "distribution": dist, "version": version, "hooks": hooks})
    for bad in broken:
        rows.append({"name": bad.name, "distribution": bad.distribution, "error": bad.error})
    return rows
