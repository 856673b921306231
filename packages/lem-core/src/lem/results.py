"""The results directory: atomic files, the summary computed from raw cycles, listing and pooling.

Layout (see docs/results.md)::

    <out>/<run-id>/run.json
    <out>/<run-id>/<experiment-id>/{experiment.toml, environment.json, setup.json,
                                    cycle-001.json, timeline-001.csv, ..., summary.json | failure.json}

Every file is written to a hidden temporary name and moved into place with
``os.replace``: a run killed at any instant leaves whole files or none.
Raw cycles are the source of truth; :func:`summarize` recomputes everything
from ``setup.json`` and the cycle files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.errors import ResultsError
from lem.metrics import ENERGY_FIGURES, RequestTrace, cycle_metrics, energy_figures, idle_power, request_metrics
from lem.stats import MIN_SAMPLES_FOR_PERCENTILES, PERCENTILES, distribution, interval

SCHEMA_VERSION = 1
CYCLE_RE = re.compile(r"^cycle-(\d{3,})\.json$")

#: Figures summarized across cycles: name -> path into a cycle's ``metrics``/``energy`` blocks.
_LATENCIES = ("ttft_s", "itl_s", "tpot_s", "e2e_s")
HEADLINE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("output_tokens_per_s", ("metrics", "output_tokens_per_s")),
    ("total_tokens_per_s", ("metrics", "total_tokens_per_s")),
    ("requests_per_s", ("metrics", "requests_per_s")),
    *(
        (f"{lat}.{stat}", ("metrics", lat, stat))
        for lat in _LATENCIES
        for stat in ("mean", *(f"p{q}" for q in PERCENTILES))
    ),
    *((f"energy.{key}", ("energy", key)) for key in ENERGY_FIGURES),
    ("flops.total", ("metrics", "flops", "total")),
    ("flops.achieved_flops_per_s", ("metrics", "flops", "achieved_flops_per_s")),
)


# --- files ------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a crash) only ever sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, kind: str, data: Mapping[str, Any], compact: bool = False) -> None:
    """Write a result file with its ``schema_version`` and ``kind`` (``compact``: one line, for raw data)."""
    doc = {"schema_version": SCHEMA_VERSION, "kind": kind, **data}
    text = json.dumps(doc, indent=None if compact else 1, allow_nan=False, default=str)
    write_atomic(path, text + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """Read a result file; a missing or damaged file is a :class:`ResultsError`."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc}); re-run the experiment") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        raise ResultsError(f"{path}: schema_version {doc.get('schema_version')!r} is not {SCHEMA_VERSION}")
    return doc


def write_timeline(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write a meter's timeline as CSV: ``t_s``, ``device``, then every other column seen."""
    columns = ["t_s", "device"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files left by a killed run (they never hold a result)."""
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def cycle_paths(exp_dir: Path) -> list[Path]:
    """The cycle files of an experiment, in cycle order."""
    found = [(int(m.group(1)), p) for p in exp_dir.iterdir() if (m := CYCLE_RE.match(p.name))]
    return [p for _, p in sorted(found)]


# --- traces in JSON form ------------------------------------------------------------


def traces_to_json(traces: Sequence[RequestTrace], t0_ns: int) -> list[dict[str, Any]]:
    """Raw traces with times relative to the cycle's start (integers, ns)."""
    return [
        {
            "id": t.id,
            "input_tokens": t.input_tokens,
            "origin_ns": None if t.origin_ns is None else t.origin_ns - t0_ns,
            "events": [[ts - t0_ns, n] for ts, n in t.events],
            "finished": t.finished,
        }
        for t in traces
    ]


def traces_from_json(rows: Iterable[Mapping[str, Any]]) -> list[RequestTrace]:
    """The inverse of :func:`traces_to_json` (times stay relative to the cycle's start)."""
    return [
        RequestTrace(
            int(r["id"]),
            int(r["input_tokens"]),
            r["origin_ns"],
            tuple((int(t), int(n)) for t, n in r["events"]),
            bool(r["finished"]),
        )
        for r in rows
    ]


# --- computing ------------------------------------------------------------------------


def compute_cycle(raw: Mapping[str, Any], setup: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``(metrics, energy, warnings)`` of one cycle from its raw record and the experiment's setup."""
    traces = traces_from_json(raw["requests"])
    model = setup.get("model_info", {})
    metrics, warnings = cycle_metrics(
        traces, raw["window"]["duration_s"], model.get("model_config"), model.get("num_parameters")
    )
    idle = setup.get("idle", {})
    energy, ewarn = energy_figures(
        raw.get("energy_window"),
        raw.get("energy_reason"),
        idle_power(idle.get("window")),
        idle.get("reason"),
        metrics["output_tokens"],
    )
    return metrics, energy, warnings + ewarn


def _dig(doc: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = doc
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def summarize(setup: Mapping[str, Any], cycles: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary of an experiment, recomputed from ``setup.json`` and raw cycle records."""
    computed = [compute_cycle(c, setup) for c in cycles]
    blocks = [{"metrics": m, "energy": e} for m, e, _ in computed]
    figures = {name: interval([_dig(b, path) for b in blocks]) for name, path in HEADLINE}
    warnings = list(setup.get("warnings", ()))
    by_message: dict[str, list[str]] = {}
    for c, (_, _, w) in zip(cycles, computed, strict=True):
        for msg in [*c.get("notes", ()), *w]:
            by_message.setdefault(msg, []).append(str(c["cycle"]))
    for msg, which in by_message.items():
        warnings.append(f"cycle{'s' if len(which) > 1 else ''} {', '.join(which)}: {msg}")
    if len(cycles) < 2:
        warnings.append(f"{len(cycles)} cycle(s): no confidence interval (run at least 2 cycles, better 5+)")
    per_request = [request_metrics(t) for c in cycles for t in traces_from_json(c["requests"])]
    pooled = {k: distribution([r[k] for r in per_request if r[k] is not None]) for k in ("ttft_s", "tpot_s", "e2e_s")}
    pooled["itl_s"] = distribution([x for r in per_request for x in r["itl_s"]])
    few = [f"{key} ({d['n']})" for key, d in pooled.items() if 0 < d["n"] < MIN_SAMPLES_FOR_PERCENTILES]
    if few:
        limit = MIN_SAMPLES_FOR_PERCENTILES
        warnings.append(f"pooled percentiles rest on fewer than {limit} samples: {', '.join(few)}")
    energies = [e for _, e, _ in computed]
    return {
        "experiment_id": setup.get("experiment_id"),
        "run_id": setup.get("run_id"),
        "backend": setup.get("backend"),
        "model": setup.get("model"),
        "sweep_values": setup.get("sweep_values", {}),
        "status": "ok",
        "cycles": len(cycles),
        "figures": figures,
        "latency_pooled": pooled,
        "methods": {
            "energy": next((e["method"] for e in energies if e["method"]), None),
            "idle": next((e["idle_method"] for e in energies if e["idle_method"]), None),
            "peak_power": next((e["peak_power_method"] for e in energies if e["peak_power_method"]), None),
            "flops": next((m["flops"]["method"] for m, _, _ in computed), None),
        },
        "energy_reason": next((e["reason"] for e in energies if e["reason"]), None),
        "idle_reason": next((e["idle_reason"] for e in energies if e["idle_reason"]), None),
        "prompts": setup.get("prompts"),
        "load": setup.get("load"),
        "idle_power_w": energies[0]["idle_power_w"] if energies else None,
        "warmup": setup.get("warmup"),
        "warnings": list(dict.fromkeys(warnings)),
    }


def aggregate_experiment(exp_dir: Path) -> dict[str, Any]:
    """Recompute an experiment's ``summary.json`` from its raw files and write it."""
    setup = read_json(exp_dir / "setup.json")
    cycles = [read_json(p) for p in cycle_paths(exp_dir)]
    if not cycles:
        raise ResultsError(f"{exp_dir}: no cycle files to aggregate")
    summary = summarize(setup, cycles)
    write_json(exp_dir / "summary.json", "summary", summary)
    return summary


def pool(exp_dirs: Sequence[Path], allow_mixed_backends: bool = False) -> dict[str, Any]:
    """One summary over the cycles of several experiments (repeats of the same setup, e.g. across runs).

    :raises ResultsError: when the experiments used different backends and that was not allowed.
    """
    setups = [read_json(d / "setup.json") for d in exp_dirs]
    backends = sorted({str(s.get("backend")) for s in setups})
    if len(backends) > 1 and not allow_mixed_backends:
        raise ResultsError(
            f"these experiments used different backends ({', '.join(backends)}); pooling their cycles mixes "
            "implementations: pass --allow-mixed-backends if that is what you want"
        )
    figures_by_exp = []
    cycles: list[dict[str, Any]] = []
    for d, s in zip(exp_dirs, setups, strict=True):
        raw = [read_json(p) for p in cycle_paths(d)]
        cycles += raw
        figures_by_exp.append((s, raw))
    # Each cycle is computed with its own experiment's setup (its own idle baseline), then pooled.
    blocks = []
    for s, raw in figures_by_exp:
        for c in raw:
            m, e, _ = compute_cycle(c, s)
            blocks.append({"metrics": m, "energy": e})
    return {
        "experiments": [str(d) for d in exp_dirs],
        "backends": backends,
        "models": sorted({str(s.get("model")) for s in setups}),
        "cycles": len(blocks),
        "figures": {name: interval([_dig(b, path) for b in blocks]) for name, path in HEADLINE},
    }


# --- finding ------------------------------------------------------------------------------


def experiment_dirs(root: Path) -> list[Path]:
    """Experiment directories under a results directory, a run directory or one experiment directory."""
    if (root / "experiment.toml").exists():
        return [root]
    found = sorted(p.parent for p in root.glob("*/experiment.toml"))
    if not found:
        found = sorted(p.parent for p in root.glob("*/*/experiment.toml"))
    return found


def resolve(target: str, results_dir: Path) -> Path:
    """A run id, ``run-id/experiment-id`` or a path, as a directory; :class:`ResultsError` if absent."""
    for candidate in (Path(target), results_dir / target):
        if candidate.is_dir():
            return candidate
    raise ResultsError(f"{target}: no such run or experiment under {results_dir} (see `lem results list`)")


def _toml(path: Path) -> dict[str, Any]:
    from lem.errors import ConfigError
    from lem.loading import read_toml

    try:
        return read_toml(path)
    except ConfigError:
        return {}


def experiment_status(exp_dir: Path) -> dict[str, Any]:
    """A row for ``lem results list``: id, model, backend, status and key figures."""
    row: dict[str, Any] = {"id": f"{exp_dir.parent.name}/{exp_dir.name}", "path": str(exp_dir)}
    doc: dict[str, Any] = {}
    for name, status in (("summary.json", "ok"), ("failure.json", "failed"), ("setup.json", "incomplete")):
        if (exp_dir / name).exists():
            try:
                doc = read_json(exp_dir / name)
            except ResultsError:
                continue
            row["status"] = status
            break
    else:
        row["status"] = "not started"
        doc = _toml(exp_dir / "experiment.toml")
    row["model"], row["backend"] = doc.get("model"), doc.get("backend")
    figs = doc.get("figures", {})
    for key in ("output_tokens_per_s", "ttft_s.p50", "energy.j_per_output_token"):
        row[key] = (figs.get(key) or {}).get("mean")
    if row["status"] == "failed":
        row["reason"] = doc.get("reason")
    row["energy_reason"] = doc.get("energy_reason")
    return row
