"""Every reader of a results directory survives every damaged field of every result file lem reads back.

One real run (a tiny local model, the real ``lem run``: two experiments of two cycles, an ``[slo]`` so goodput
figures exist) is made once. Then, for each JSON file kind lem writes and reads back (``run.json``,
``setup.json``, ``summary.json``, ``cycle-NNN.json``, ``environment.json``, ``failure.json``,
``interrupted.json``), every path in the file (each table and list and each leaf: the first element of a list
stands for the others) has its value replaced by a value of a wrong kind, and every reader is run on the
damaged copy in this process (click's CliRunner on the real ``lem`` command): ``lem results list``, ``show``,
``compare``, ``export`` (csv, parquet), ``aggregate``, ``plot`` and ``lem report``.

For each: the exit status is 0, 1 or 2, nothing raised and no traceback; when the reader skipped or refused
something (exit status 1 or 2, or a line calling something damaged), a line names the damaged file (its
experiment directory and name); no result file is changed or deleted, except the summaries that
``aggregate`` rewrites by design (docs/results.md).

Timelines (``timeline-NNN.csv``) are damaged apart, as real files get damaged (cut mid-row, a header column
missing or renamed, text or NaN in a numeric column, empty, header only, binary garbage, gone while its cycle file
says it was recorded), in a second real run whose meter takes them (NVML on the fake board of
``lem_energy_nvml.testing``), with the same checks on every reader of timelines.

The quick sweep rotates the wrong kind and the costly readers (plot, report, parquet) over the paths so it
runs in about two minutes on two cores; the ``slow`` ones (run with ``LEM_TEST_DAMAGE_SWEEP=1``) damage every
path, once or with every wrong kind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lem.cli.main import cli
from lem.plugins import backend_names
from lem.results.files import write_json

RUN = """model = "random:tiny-llama"
[dataset]
num_prompts = 2
input_length = 8
[generation]
max_output_tokens = 3
[measurement]
energy_meter = "none"
cycles = 2
warmup_requests = 0
[slo]
ttft_ms = 1000
[sweep]
"batching.batch_size" = [1, 2]
"""

#: Values of the wrong kind, in the order the quick sweep rotates them.
WRONG: tuple[Any, ...] = (None, "text", -1, [1, "x"], {"x": 1}, 1e300, True, 2**70)

Path_ = tuple[str | int, ...]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run, plus a failed and an interrupted experiment beside its two (their records as lem writes them)."""
    if "pytorch" not in backend_names():
        pytest.skip("lem-backend-pytorch is not installed")
    where = tmp_path_factory.mktemp("real-run")
    (where / "run.toml").write_text(RUN)
    done = subprocess.run(
        [sys.executable, "-m", "lem", "run", "run.toml", "--out", "results", "-q", "--no-report"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    [run_dir] = (where / "results").iterdir()
    # A failed and an interrupted experiment: their records written by lem's own writer with the fields
    # lem.campaign.records writes (a real failure would need a backend that fails on purpose).
    ok = sorted(run_dir.glob("001-*"))[0]
    for name, kind, fields in (
        (
            "002-failed",
            "failure",
            {"reason": "WorkerCrashed: exit status 1", "detail": "a line", "exit_code": 1, "launcher": "local"},
        ),
        ("003-interrupted", "interrupted", {"reason": "interrupted (Ctrl-C)", "cycles_written": 1}),
    ):
        exp = run_dir / name
        exp.mkdir()
        shutil.copy(ok / "experiment.toml", exp / "experiment.toml")
        shutil.copy(ok / "setup.json", exp / "setup.json")
        base = {"experiment_id": name, "run_id": run_dir.name}
        if kind == "failure":
            base |= {"backend": "pytorch", "model": "random:tiny-llama", "sweep_values": {"batching.batch_size": 2}}
        write_json(exp / f"{kind}.json", kind, base | fields)
    return where / "results"


def _paths(doc: Any, at: Path_ = ()) -> Iterator[Path_]:
    """Every path in ``doc`` (tables, lists and leaves); a list's first element stands for the rest."""
    if at:
        yield at
    if isinstance(doc, dict):
        for key, value in doc.items():
            if at or key not in ("schema_version", "kind"):  # those two are read_json's own check
                yield from _paths(value, (*at, key))
    elif isinstance(doc, list) and doc:
        yield from _paths(doc[0], (*at, 0))


def _replaced(doc: Any, at: Path_, value: Any) -> Any:
    if not at:
        return value
    out = dict(doc) if isinstance(doc, dict) else list(doc)
    out[at[0]] = _replaced(doc[at[0]], at[1:], value)  # type: ignore[index]
    return out


def _targets(results: Path) -> list[Path]:
    """The file of each kind that is damaged: run.json, the first experiment's, the failed and interrupted records."""
    [run_dir] = results.iterdir()
    first = sorted(run_dir.glob("000-*"))[0]
    names = ("setup.json", "summary.json", "cycle-001.json", "environment.json")
    return [
        run_dir / "run.json",
        *(first / n for n in names),
        run_dir / "002-failed" / "failure.json",
        run_dir / "003-interrupted" / "interrupted.json",
    ]


def _readers(run_id: str, out: Path) -> dict[str, list[str]]:
    return {
        "list": ["results", "list", "results"],
        "show": ["results", "show", run_id],
        "compare": ["results", "compare", run_id],
        "export-csv": ["results", "export", "results", "--level", "cycle", "--format", "csv"],
        "export-experiment": ["results", "export", "results", "--format", "csv"],
        "aggregate": ["results", "aggregate", "--dir", "results"],
        "export-parquet": [
            "results",
            "export",
            "results",
            "--level",
            "request",
            "--format",
            "parquet",
            "--out",
            str(out / "t.parquet"),
        ],
        "plot": ["results", "plot", f"results/{run_id}", "--out", str(out / "plots")],
        "report": ["report", run_id, "--out", str(out / "report" / "report.html")],
    }


CHEAP = ("list", "show", "compare", "export-csv", "export-experiment", "aggregate")
COSTLY = ("export-parquet", "plot", "report")
#: The costly readers run on one damage in this many (rotating), the cheap ones on every one.
COSTLY_EVERY = 12


def _hashes(results: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(results.rglob("*")) if p.is_file()}


def _sweep(real_run: Path, tmp_path: Path, every_path: bool, every_kind: bool) -> list[str]:
    """Run the sweep; one line per failure found (what was damaged, which reader, what went wrong).

    ``every_path``: damage every path (else the tables and lists two deep and one deeper path in five);
    ``every_kind``: with every wrong kind (else one, rotating).
    """
    results = tmp_path / "results"
    shutil.copytree(real_run, results)
    [run_dir] = results.iterdir()
    pristine = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    before = _hashes(results)
    readers = _readers(run_dir.name, tmp_path / "out")
    failures: list[str] = []
    step = 0
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        # What each reader says of the undamaged run (the failed and interrupted experiments are named there).
        baseline = {name: _invoke(args) for name, args in readers.items()}
        for path, data in pristine.items():
            path.write_bytes(data)
        for target in _targets(results):
            original = json.loads(pristine[target])
            for at in _paths(original):
                if not every_path and len(at) > 2 and step % 5:  # the quick sweep: one deep path in five
                    step += 1
                    continue
                kinds = WRONG if every_kind else (WRONG[step % len(WRONG)],)
                for wrong in kinds:
                    names = (
                        [*CHEAP, COSTLY[step // COSTLY_EVERY % len(COSTLY)]] if step % COSTLY_EVERY == 0 else [*CHEAP]
                    )
                    step += 1
                    target.write_text(json.dumps(_replaced(original, at, wrong)))
                    damaged = {p: p.read_bytes() for p in pristine}
                    for name in names:
                        what = f"{target.relative_to(results)} {'.'.join(map(str, at))} = {wrong!r:.20} | {name}"
                        found = _check(readers[name], baseline[name], target, results, damaged)
                        failures += [f"{what}: {p}" for p in found]
                        for path, data in damaged.items():  # undo what aggregate rewrote
                            if path.read_bytes() != data:
                                path.write_bytes(data)
                    target.write_bytes(pristine[target])
    finally:
        os.chdir(cwd)
    assert _hashes(results) == before
    return failures


def _invoke(args: list[str]) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    return result.exit_code, result.stdout + result.stderr, result.exception


def _check(
    args: list[str], before: tuple[int, str, Any], target: Path, results: Path, damaged: dict[Path, bytes]
) -> list[str]:
    """What is wrong with a reader's answer to a damaged ``target``: an exception, a traceback, a skip or refusal
    that does not name the file, a result file changed or deleted."""
    code, text, exc = _invoke(args)
    problems = []
    if exc is not None and not isinstance(exc, SystemExit):
        problems.append(f"raised {type(exc).__name__}: {str(exc)[:120]}")
    elif code not in (0, 1, 2):
        problems.append(f"exit status {code}")
    if "Traceback" in text:
        problems.append("a traceback")
    named = f"{target.parent.name}/{target.name}"
    known = set(before[1].splitlines())
    new = [line for line in text.splitlines() if line not in known]
    skipped = code > before[0] or any(w in line for line in new for w in ("damaged", "skipped", "left out", "nothing"))
    if skipped and not problems and not any(named in line for line in text.splitlines()):
        first = next((line for line in new if line.strip()), "")
        problems.append(f"exit {code} without naming {named}: {first[:160]!r}")
    for path, data in damaged.items():
        rewritten = args[:2] == ["results", "aggregate"] and path.name == "summary.json"
        if not path.is_file():
            problems.append(f"deleted {path.relative_to(results)}")
        elif path.read_bytes() != data and not rewritten:
            problems.append(f"changed {path.relative_to(results)}")
    return problems


def test_every_reader_survives_a_damaged_field(real_run: Path, tmp_path: Path) -> None:
    failures = _sweep(real_run, tmp_path, every_path=False, every_kind=False)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)


#: The exhaustive sweeps take ten minutes to hours: run them with LEM_TEST_DAMAGE_SWEEP=1.
exhaustive = pytest.mark.skipif(
    not os.environ.get("LEM_TEST_DAMAGE_SWEEP"), reason="exhaustive damage sweep: set LEM_TEST_DAMAGE_SWEEP=1"
)


@pytest.mark.slow
@exhaustive
def test_every_reader_survives_each_damaged_field(real_run: Path, tmp_path: Path) -> None:
    """Every path of every file, one wrong kind each (about ten minutes on two cores)."""
    failures = _sweep(real_run, tmp_path, every_path=True, every_kind=False)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)


@pytest.mark.slow
@exhaustive
def test_every_reader_survives_every_wrong_kind_of_every_field(real_run: Path, tmp_path: Path) -> None:
    """Every path of every file with every wrong kind (an hour or more on two cores)."""
    failures = _sweep(real_run, tmp_path, every_path=True, every_kind=True)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)


# --- timelines ---------------------------------------------------------------------------------------------

#: A run whose meter takes timelines: NVML on a fake board (lem_energy_nvml.testing), sampled every 10 ms.
METERED_RUN = """model = "random:tiny-llama"
[dataset]
num_prompts = 2
input_length = 8
[generation]
max_output_tokens = 3
[measurement]
energy_meter = "nvml"
sampling_interval_ms = 10
idle_seconds = 0.2
cycles = 2
warmup_requests = 0
[pytorch]
device = "cpu"
[sweep]
"batching.batch_size" = [1, 2]
"""


@pytest.fixture(scope="module")
def metered_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run with a ``timeline-NNN.csv`` per cycle: ``lem run`` with the fake pynvml first on its path."""
    if "pytorch" not in backend_names():
        pytest.skip("lem-backend-pytorch is not installed")
    testing = pytest.importorskip("lem_energy_nvml.testing")
    where = tmp_path_factory.mktemp("metered-run")
    shim = testing.write_pynvml(where / "fake-nvml")
    (where / "run.toml").write_text(METERED_RUN)
    done = subprocess.run(
        [sys.executable, "-m", "lem", "run", "run.toml", "--out", "results", "-q", "--no-report"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(shim), *sys.path])},
    )
    assert done.returncode == 0, done.stderr
    [run_dir] = (where / "results").iterdir()
    for exp in sorted(run_dir.glob("00*")):
        assert sorted(p.name for p in exp.glob("timeline-*.csv")) == ["timeline-001.csv", "timeline-002.csv"]
    return where / "results"


def _cut_mid_row(data: bytes) -> bytes:
    lines = data.split(b"\n")
    return b"\n".join(lines[:3]) + b"\n" + lines[3][: len(lines[3]) // 3]


def _header(data: bytes, old: bytes, new: bytes) -> bytes:
    header, rest = data.split(b"\n", 1)
    names = [new if name == old else name for name in header.split(b",")]
    return b",".join(n for n in names if n) + b"\n" + rest


def _cell(data: bytes, column: bytes, value: bytes) -> bytes:
    """``data`` with the cell of ``column`` in its second row replaced by ``value``."""
    lines = data.split(b"\n")
    where = lines[0].split(b",").index(column)
    cells = lines[2].split(b",")
    cells[where] = value
    lines[2] = b",".join(cells)
    return b"\n".join(lines)


#: How a timeline file gets damaged: its new bytes from its old ones (``None``: the file is gone, while its
#: cycle file, which names it by its number, is still there).
TIMELINE_DAMAGE: dict[str, Any] = {
    "cut mid-row": _cut_mid_row,
    "header lacks a column": lambda d: _header(d, b"power_w", b""),
    "t_s column renamed": lambda d: _header(d, b"t_s", b"time"),
    "power_w column renamed": lambda d: _header(d, b"power_w", b"power"),
    "text power": lambda d: _cell(d, b"power_w", b"n/a"),
    "text t_s": lambda d: _cell(d, b"t_s", b"12:00:01"),
    "nan temperature": lambda d: _cell(d, b"temperature_c", b"nan"),
    "empty": lambda d: b"",
    "header only": lambda d: d.split(b"\n", 1)[0] + b"\n",
    "binary garbage": lambda d: bytes(range(256)) * 4,
    "missing": lambda d: None,
}


#: ``lem report`` draws every plot (ten seconds and more here): it runs on this damage only (it reads timelines
#: as ``plot --kind timeline`` does, which runs on every one).
REPORT_ON = ("missing",)


def test_every_reader_survives_a_damaged_timeline(metered_run: Path, tmp_path: Path) -> None:
    """Each way a timeline gets damaged, every reader of timelines: exit 0/1/2, no traceback, the damaged file
    named when something was skipped, no other result file changed (the sweep's checks, :func:`_check`)."""
    results = tmp_path / "results"
    shutil.copytree(metered_run, results)
    [run_dir] = results.iterdir()
    target = sorted(run_dir.glob("000-*"))[0] / "timeline-001.csv"
    named = f"{target.parent.name}/{target.name}"
    pristine = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    readers = {
        # request-level parquet reads no timeline; plot draws every kind, timeline is the one that reads them
        **{name: args for name, args in _readers(run_dir.name, out).items() if name not in ("plot", "export-parquet")},
        "plot-timeline": ["results", "plot", f"results/{run_dir.name}", "--kind", "timeline", "--out", str(out)],
    }
    failures = []
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        baseline = {name: _invoke(args) for name, args in readers.items()}
        assert {name: b[0] for name, b in baseline.items()} == dict.fromkeys(readers, 0), baseline
        for how, damage in TIMELINE_DAMAGE.items():
            for path, data in pristine.items():
                path.write_bytes(data)
            new = damage(pristine[target])
            if new is None:
                target.unlink()
            else:
                target.write_bytes(new)
            damaged = {p: p.read_bytes() for p in pristine if p.is_file()}
            for name, args in readers.items():
                if name == "report" and how not in REPORT_ON:
                    continue
                found = _check(args, baseline[name], target, results, damaged)
                if name == "report" and named not in (out / "report" / "report.html").read_text():
                    found.append(f"the page does not name {named}")  # its timeline plot lacks that cycle
                failures += [f"{how} | {name}: {p}" for p in found]
                for path, data in damaged.items():  # undo what aggregate rewrote
                    if path.read_bytes() != data:
                        path.write_bytes(data)
    finally:
        os.chdir(cwd)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
