"""What the report shows of a study: runs, figure groups, per-experiment tables and the "what differs" table.

A study is several runs in one results directory (a sweep today, another
backend tomorrow). The report names each experiment by its run and its
experiment id (the same experiment id recurs across runs), groups the
registry's figures by what they measure (throughput, latency, energy, and
whatever group a new registry row brings), and lists the config keys whose
values differ between the experiments shown. Everything here reads the
figure registry, so a figure added there appears here without an edit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lem.configfile.documents import TOMLDecodeError, parse_toml
from lem.figures.registry import FIGURES, Figure
from lem.results.rundata import ExperimentData, cycles, read_doc

#: Figure groups by the first part of a figure's name; any other prefix is a group of its own name.
_GROUPS = {
    "energy": "energy",
    "goodput": "goodput",
    "steady_state": "steady state",
    "flops": "compute",
}
#: The order groups are shown in; a group not named here comes after them, in registry order.
GROUP_ORDER = ("throughput", "latency", "energy", "goodput", "steady state", "compute")


def group_of(fig: Figure) -> str:
    """The group a figure is shown in: latency (a time per request or token), energy, throughput..."""
    prefix = fig.name.split(".", 1)[0] if "." in fig.name else ""
    if not prefix:
        return "throughput"
    if prefix.endswith("_s") and fig.path[:1] == ("metrics",) and fig.unit == "ms":
        return "latency"
    return _GROUPS.get(prefix, prefix.replace("_", " "))


def grouped(figures: Iterable[Figure]) -> list[tuple[str, list[Figure]]]:
    """``figures`` by group, groups in :data:`GROUP_ORDER` then in the order they first appear."""
    out: dict[str, list[Figure]] = {}
    for fig in figures:
        out.setdefault(group_of(fig), []).append(fig)
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    order = sorted(out, key=lambda g: (rank.get(g, len(rank)), list(out).index(g)))
    return [(g, out[g]) for g in order]


def all_figures() -> tuple[Figure, ...]:
    """Every figure of the registry (the drill-down shows each one an experiment has a value for)."""
    return FIGURES


# --- runs ---------------------------------------------------------------------------------------------


@attrs.frozen
class RunInfo:
    """The run an experiment belongs to: its id, the file it ran from and the lem that ran it."""

    run_id: str
    source: str | None
    lem_version: str | None


def run_info(exp: ExperimentData, cache: dict[Path, Mapping[str, Any] | None] | None = None) -> RunInfo:
    """The run of ``exp``: its ``run.json`` (one directory up), else what its own files record."""
    cache = {} if cache is None else cache
    parent = exp.path.parent
    if parent not in cache:
        cache[parent] = read_doc(parent / "run.json", [])
    meta = cache[parent] or {}
    doc = exp.summary or exp.failure or exp.setup or {}
    run_id = meta.get("run_id") or doc.get("run_id") or parent.name
    return RunInfo(str(run_id), _str(meta.get("source")), _str(meta.get("lem_version")))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def anchors(exps: Sequence[ExperimentData], runs: Sequence[RunInfo]) -> list[str]:
    """One HTML id per experiment, unique on the page (``exp-RUN--EXPERIMENT``, numbered if still equal)."""
    out, seen = [], set()
    for exp, run in zip(exps, runs, strict=True):
        base = "exp-" + _slug(run.run_id) + "--" + _slug(exp.id)
        anchor, k = base, 2
        while anchor in seen:
            anchor, k = f"{base}-{k}", k + 1
        seen.add(anchor)
        out.append(anchor)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "_"


# --- config --------------------------------------------------------------------------------------------


def flat_config(exp: ExperimentData) -> dict[str, Any]:
    """The experiment's resolved config as dotted keys: the summary's ``config``, else ``experiment.toml``."""
    for doc in (exp.summary, exp.setup, exp.failure):
        config = (doc or {}).get("config")
        if isinstance(config, Mapping) and config:
            return _flatten(config)
    if exp.config_toml is None:
        return {}
    try:
        return _flatten(parse_toml(exp.config_toml))
    except TOMLDecodeError:
        return {}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differs(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every one of ``configs`` (a missing key differs too)."""
    if len(configs) < 2:
        return []
    keys = list(dict.fromkeys(k for c in configs for k in c))
    missing = object()
    return [k for k in keys if len({_canon(c.get(k, missing)) for c in configs}) > 1]


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def config_text(value: Any) -> str:
    """A config value as text (``-`` when the experiment does not set the key)."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# --- energy boundary ----------------------------------------------------------------------------------


def boundary(exp: ExperimentData) -> str | None:
    """What the energy figures cover: the metered devices of the first cycle that records any (``gpu 0, cpu``)."""
    for doc in cycles(exp):
        devices = (doc.get("energy") or {}).get("devices") or (doc.get("energy_window") or {}).get("devices")
        if isinstance(devices, list) and devices:
            parts = []
            for d in devices:
                if not isinstance(d, Mapping):
                    continue
                comp = str(d.get("component") or "gpu")
                dev = d.get("device")
                parts.append(f"{comp} {dev}" if comp == "gpu" and dev is not None else comp)
            if parts:
                return ", ".join(dict.fromkeys(parts))
    return None
