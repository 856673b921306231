"""``lem results export --format boamps``: one BoAmps JSON report per experiment (the format CodeCarbon 3.3 exports).

BoAmps (Boavizta, https://github.com/Boavizta/BoAmps) is a report of an AI
task's energy: a header, the task (stage, family, algorithms, dataset), one
measure per measurement, the system, software and infrastructure. lem writes
one measure per cycle, with lem's energy method and boundary (the metered
devices) in ``measurementMethod``. ``powerConsumption`` is energy in kWh, as
CodeCarbon writes it. An experiment without measured energy gets no report
(BoAmps has no null measure): a warning line names it and why. Reports follow
the published schema (``model/report_schema.json``, draft-04); a field lem
does not know is left out, except ``infrastructure.infraType``, which the
schema requires: the user's ``--infra-type``, else ``other`` (see docs/results.md).
docs/results.md maps each field.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lem import __version__
from lem.results.drilldown import boundary
from lem.results.files import experiment_dirs, write_atomic
from lem.results.rundata import ExperimentData, cycles, number, read_experiment

FORMAT_VERSION = "0.1"
SPEC_URI = "https://github.com/Boavizta/BoAmps/tree/main/model"
_J_PER_KWH = 3.6e6


def _when(unix: Any) -> str | None:
    value = number(unix)
    return None if value is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))


def report(exp: ExperimentData, infra_type: str = "other") -> tuple[dict[str, Any] | None, str | None]:
    """The BoAmps report of one experiment, or ``None`` and why there is none.

    ``infra_type`` is ``infrastructure.infraType`` as the user states it (lem cannot tell on-premise from
    cloud; ``other`` is the schema's catch-all, not a finding).
    """
    summary = exp.summary
    if summary is None:
        return None, f"{exp.path}: no summary.json ({exp.status})"
    docs = cycles(exp)
    method = (summary.get("methods") or {}).get("energy")
    where = boundary(exp) or "not recorded"
    measures = []
    for doc in docs:
        energy = number((doc.get("energy") or {}).get("total_j"))
        if energy is None:
            continue
        window = doc.get("energy_window") or doc.get("window") or {}
        measure = {
            "measurementMethod": f"lem {__version__}: {method or 'unknown'} (boundary: {where})",
            "version": __version__,
            "powerConsumption": energy / _J_PER_KWH,
            "measurementDuration": number(window.get("duration_s")),
        }
        measures.append({k: v for k, v in measure.items() if v is not None})
    if not measures:
        why = summary.get("energy_reason") or "no cycle has a total energy"
        return None, f"{exp.path}: energy not measured ({why}); no BoAmps report"
    config = summary.get("config") or {}
    work = summary.get("workload") or {}
    env = exp.environment or {}
    algorithm = {
        "algorithmType": "llm",
        "foundationModelName": summary.get("model"),
        "framework": summary.get("backend"),
        "quantization": config.get("llamacpp.quantization") or config.get("quantization") or config.get("precision"),
    }
    # The tokens read and written over all cycles; BoAmps' ``source`` is only public/private/other,
    # so the prompt set's description goes in ``taskDescription``.
    datasets = [
        {"dataUsage": usage, "dataType": "token", "dataQuantity": sum(work.get(f"{usage}_tokens") or ()) or None}
        for usage in ("input", "output")
    ]
    prompts = (summary.get("prompts") or {}).get("description")
    task = {
        "taskStage": "inference",
        "taskFamily": "text generation",
        "nbRequest": sum(work.get("requests") or ()) or None,
        "algorithms": [{k: str(v) for k, v in algorithm.items() if v is not None}],
        "dataset": datasets,
        "taskDescription": f"lem experiment {summary.get('key')}: {summary.get('cycles')} cycles, "
        f"energy method {method}, boundary {where}" + (f"; prompts: {prompts}" if prompts else ""),
    }
    components = [{"componentType": "cpu", "componentName": (env.get("cpu") or {}).get("model"), "nbComponent": 1}]
    for g in env.get("gpus") or ():
        if isinstance(g, Mapping) and (g.get("component") or "gpu") == "gpu":
            components.append({"componentType": "gpu", "componentName": g.get("name"), "nbComponent": 1})
    ram = number(env.get("ram_bytes"))
    if ram is not None:
        components.append({"componentType": "ram", "nbComponent": 1, "memorySize": round(ram / 1e9, 3)})
    out = {
        "header": {
            "formatVersion": FORMAT_VERSION,
            "formatVersionSpecificationUri": SPEC_URI,
            "reportId": str(summary.get("key") or exp.id),
            # when the summary was written (a cycle records no wall-clock time)
            "reportDatetime": _when((exp.path / "summary.json").stat().st_mtime),
            "reportStatus": "final",
        },
        "task": task,
        "measures": measures,
        "system": {"os": (env.get("os") or {}).get("system")},
        "software": {"language": "python", "version": (env.get("python") or {}).get("version")},
        "infrastructure": {"infraType": infra_type, "components": components},
    }
    return _strip(out), None


def _strip(doc: Any) -> Any:
    """``doc`` without ``None`` values and the objects left empty by removing them (BoAmps has no null)."""
    if isinstance(doc, dict):
        kept = {k: _strip(v) for k, v in doc.items() if v is not None}
        return {k: v for k, v in kept.items() if v != {}}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


def write(root: Path, out_dir: Path, warn: Callable[[str], None], infra_type: str = "other") -> list[Path]:
    """One ``RUN--EXPERIMENT.boamps.json`` per experiment under ``root`` with energy, in ``out_dir``."""
    written = []
    for d in experiment_dirs(root):
        doc, why = report(read_experiment(d), infra_type)
        if doc is None:
            warn(str(why))
            continue
        path = out_dir / f"{d.parent.name}--{d.name}.boamps.json"
        write_atomic(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written
