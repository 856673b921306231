"""Bad input through the real CLI, one table: each case is the input, the exit status, the words the
error line must contain, and no traceback.

Most cases run the real ``lem`` command in this process (click's CliRunner on ``lem.cli.main.cli``): none of
them gets as far as starting a worker. Cases marked ``subprocess`` run ``python -m lem`` as a user
would. Damaged result files are made by damaging a real run's files (one real run per module).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

from lem.cli.main import cli
from lem.plugins import backend_names, meter_names
from lem.results.files import SCHEMA_VERSION

OK = 'model = "random:tiny-llama"\n[measurement]\nenergy_meter = "none"\n'
RUN = (
    'model = "random:tiny-llama"\n[dataset]\nnum_prompts = 2\ninput_length = 8\n[generation]\nmax_output_tokens = 3\n'
    '[measurement]\nenergy_meter = "none"\ncycles = 1\nwarmup_requests = 0\n[sweep]\n"batching.batch_size" = [1, 2]\n'
)
# Python loads a module named sitecustomize from the path at start-up: this one hides the modules
# listed in LEM_TEST_HIDE, standing in for an environment where that optional package is not installed.
HIDE = """
import os, sys
HIDDEN = set(os.environ.get("LEM_TEST_HIDE", "").split(","))
class _Hide:
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return self.inner.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.inner, attr)
sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
"""


Edit = Callable[[dict[str, Any]], dict[str, Any]]


@attrs.frozen
class Case:
    id: str
    args: tuple[str, ...]
    code: int
    words: tuple[str, ...]
    #: Files to create (relative to the working directory): text, or bytes as they are.
    files: dict[str, str | bytes] = attrs.field(factory=dict)
    #: Damage to a real run copied to ./results: (glob under it, new content; None: a directory instead;
    #: a function: the real JSON file as that function changes it).
    damage: tuple[str, str | bytes | Edit | None] | None = None
    #: Files of that run to delete first (globs under ./results).
    remove: tuple[str, ...] = ()
    subprocess: bool = False
    #: Copy the real run to ./results even without damage (for an output that cannot be written).
    real_run: bool = False
    env: dict[str, str] = attrs.field(factory=dict)
    needs: Callable[[], str | None] | None = None


def _sweep(n: int) -> str:
    return OK + f"[sweep]\nseed = {list(range(n))}\n"


def _with(table: str, body: str) -> str:
    return OK + f"[{table}]\n{body}\n" if table != "measurement" else OK + body + "\n"


def _server(body: str) -> dict[str, str | bytes]:
    """The files of an experiment on the server backend (engine vllm) whose ``[server]`` table also holds ``body``."""
    return {"exp.toml": _with("server", 'engine = "vllm"\n' + body).replace("model =", 'backend = "server"\nmodel =')}


def _needs_pytorch() -> str | None:
    return None if "pytorch" in backend_names() else "lem-backend-pytorch is not installed"


def _needs_nvml() -> str | None:
    return None if "nvml" in meter_names() else "lem-energy-nvml is not installed"


def _needs_unprivileged() -> str | None:
    return "root may write anywhere" if os.geteuid() == 0 else None


def _cycle_damaged_shape() -> str:
    return json.dumps({"schema_version": SCHEMA_VERSION, "kind": "cycle", "cycle": 1})


def _summary_damaged_shape() -> str:
    return json.dumps({"schema_version": SCHEMA_VERSION, "kind": "summary", "figures": [1, 2]})


def _summary_with(**fields: object) -> str:
    """A summary lem could have written, but with ``fields`` (``figures``, ``cycles``, ...) as given."""
    doc = {"schema_version": SCHEMA_VERSION, "kind": "summary", "status": "ok", "cycles": 1, "figures": {}}
    doc |= {"figures": {"output_tokens_per_s": {"n": 1, "mean": 9.5, "values": [9.5]}}}
    return json.dumps({k: v for k, v in (doc | fields).items() if v is not ...})


def _overflowing_timeline() -> str:
    # Readable as CSV and every cell a finite number, but the trapezoid of two samples overflows to
    # infinity: a figure computed from this timeline cannot be written, its cycle alone can.
    return "t_s,device,power_w\n" + "".join(f"{i * 0.005:.3f},0,1.7e308\n" for i in range(6000))


def _real_with(**fields: object) -> Edit:
    """The real file with ``fields`` replaced (a cycle file whose ``metrics`` is text, ...)."""
    return lambda doc: doc | fields


def _first_request_with(**fields: object) -> Edit:
    """The real cycle file, its first request with ``fields`` replaced."""
    return lambda doc: doc | {"requests": [doc["requests"][0] | fields, *doc["requests"][1:]]}


def _window_with(**fields: object) -> Edit:
    """The real cycle file, its ``window`` with ``fields`` replaced."""
    return lambda doc: doc | {"window": doc["window"] | fields}


def _summary_with_figure(value: object) -> str:
    figures = {"output_tokens_per_s": value}
    return json.dumps({"schema_version": SCHEMA_VERSION, "kind": "summary", "status": "ok", "figures": figures})


V = ("config", "validate", "exp.toml")
R = ("run", "exp.toml", "--out", "out")
CASES = [
    # --- the experiment file itself
    Case("missing file", V, 2, ("exp.toml", "file not found")),
    Case("empty file", V, 2, ("model", "is required"), {"exp.toml": ""}),
    Case("directory as config", ("config", "validate", "adir"), 2, ("adir", "is a directory"), {"adir/x": ""}),
    Case("binary file", V, 2, ("exp.toml", "not UTF-8"), {"exp.toml": b"\x00\xff\xfe\x9c binary \x80"}),
    Case("non-UTF-8 text", V, 2, ("not UTF-8", "offset 12"), {"exp.toml": 'model = "caf\xe9"\n'.encode("latin-1")}),
    Case("UTF-8 byte-order mark is accepted", V, 0, ("OK",), {"exp.toml": b"\xef\xbb\xbf" + OK.encode()}),
    Case("TOML syntax error", V, 2, ("TOML syntax error", "line 1"), {"exp.toml": "model = \n"}),
    Case(
        "NaN in TOML",
        V,
        2,
        ("generation.temperature", "finite"),
        {"exp.toml": _with("generation", "temperature = nan")},
    ),
    Case(
        "inf duration",
        V,
        2,
        ("measurement.idle_seconds", "finite"),
        {"exp.toml": _with("measurement", "idle_seconds = inf")},
    ),
    Case(
        "absurd duration",
        V,
        2,
        ("cooldown_seconds", "3600"),
        {"exp.toml": _with("measurement", "cooldown_seconds = 1e12")},
    ),
    Case("inf rate", V, 2, ("traffic.rate", "finite"), {"exp.toml": _with("traffic", 'mode = "poisson"\nrate = inf')}),
    Case("seed beyond 64 bits", V, 2, ("seed", "64-bit"), {"exp.toml": f"seed = {2**70}\n" + OK}),
    Case("negative seed", V, 2, ("seed", ">= 0"), {"exp.toml": "seed = -1\n" + OK}),
    Case("huge count", V, 2, ("num_prompts", "64-bit"), {"exp.toml": _with("dataset", f"num_prompts = {10**30}")}),
    Case(
        "negative count", V, 2, ("dataset.num_prompts = -3", ">= 1"), {"exp.toml": _with("dataset", "num_prompts = -3")}
    ),
    Case("zero cycles", V, 2, ("measurement.cycles = 0", ">= 1"), {"exp.toml": _with("measurement", "cycles = 0")}),
    Case(
        "input length that would allocate for minutes",
        V,
        2,
        ("dataset.input_length", "10000000"),
        {"exp.toml": _with("dataset", "input_length = 1000000000")},
    ),
    Case(
        "prompts too large for memory",
        V,
        2,
        ("num_prompts", "prompt tokens"),
        {"exp.toml": _with("dataset", "num_prompts = 1000000\ninput_length = 1000\nmax_input_tokens = 1000")},
    ),
    Case(
        "input longer than the built-in model's context",
        V,
        2,
        ("dataset.input_length", "context", "2048"),
        {"exp.toml": _with("dataset", "input_length = 4000")},
    ),
    Case(
        "wrong type", V, 2, ("measurement.cycles", "expected int"), {"exp.toml": _with("measurement", 'cycles = "3"')}
    ),
    Case(
        "unknown key",
        V,
        2,
        ("generation.temperatur", "did you mean 'temperature'"),
        {"exp.toml": _with("generation", "temperatur = 1.0")},
    ),
    Case(
        "string where a list of integers is expected (one line, not one per character)",
        V,
        2,
        ("measurement.devices", "expected a list of integers, got str"),
        {"exp.toml": _with("measurement", 'devices = "0,1,2,3"')},
    ),
    Case(
        "table where a list of integers is expected",
        V,
        2,
        ("measurement.devices", "expected a list of integers, got dict"),
        {"exp.toml": _with("measurement", "devices = {}")},
    ),
    Case(
        "empty model",
        V,
        2,
        ("model = ''", "is empty"),
        {"exp.toml": 'model = ""\n[measurement]\nenergy_meter = "none"\n'},
    ),
    Case("blank adapter", V, 2, ("adapter = ' '", "is empty"), {"exp.toml": 'adapter = " "\n' + OK}),
    Case(
        "control character in a name",
        V,
        2,
        ("revision", "control character"),
        {"exp.toml": 'revision = "main\\u0000"\n' + OK},
    ),
    # --- backend tables: types and bounds through lem.options (hardening 3, class 2)
    Case(
        "server port above 65535",
        V,
        2,
        ("server.port = 70000", "in [0, 65535]"),
        _server("port = 70000"),
    ),
    Case(
        "server port as a string",
        V,
        2,
        ("server.port", "an integer"),
        _server('port = "8000"'),
    ),
    Case(
        "no client process",
        V,
        2,
        ("server.client_processes = 0", "in [1, 64]"),
        _server("client_processes = 0"),
    ),
    Case(
        "client processes as a fraction",
        V,
        2,
        ("server.client_processes", "an integer"),
        _server("client_processes = 1.5"),
    ),
    Case(
        "NaN timeout",
        V,
        2,
        ("server.request_timeout_s = nan", "finite"),
        _server("request_timeout_s = nan"),
    ),
    Case(
        "health_path without its leading slash",
        V,
        2,
        ("server.health_path = 'health'", '"/.*"'),
        _server('health_path = "health"'),
    ),
    Case(
        "nested table where a map of strings is expected",
        V,
        2,
        ("server.env", "a table of strings"),
        _server("env = {A = {b = 1}}"),
    ),
    Case(
        "empty server host",
        V,
        2,
        ("server.host = ''", "an address to listen on", "127.0.0.1"),
        _server('host = ""'),
    ),
    *(
        Case(
            f"server url {what}",
            V,
            2,
            (f"server.url = {url!r}", words, "e.g. http://127.0.0.1:8000"),
            {"exp.toml": _with("server", f"url = {json.dumps(url)}").replace("model =", 'backend = "server"\nmodel =')},
        )
        for what, url, words in [
            ("port above 65535", "http://127.0.0.1:99999", "Port out of range"),
            ("port not a number", "http://127.0.0.1:eighty", "Port could not be cast"),
            ("port 0", "http://127.0.0.1:0", "port 0 is not a port"),
            ("without a host", "http://:8000", "names no host"),
            ("with a space", "http://127.0.0.1:8000 /", "spaces or control characters"),
            ("with a query", "http://127.0.0.1:8000?key=1", "query or fragment"),
            ("unclosed IPv6 bracket", "http://[::1:8000", "not a valid URL"),
        ]
    ),
    Case(
        "2**63 count in a backend table (llamacpp)",
        V,
        2,
        ("llamacpp.n_batch", "below 2**31"),
        {"exp.toml": _with("llamacpp", f"n_batch = {2**63 - 1}").replace("model =", 'backend = "llamacpp"\nmodel =')},
    ),
    Case(
        "negative number in a list of shares (llamacpp)",
        V,
        2,
        ("llamacpp.tensor_split", "numbers each >= 0"),
        {
            "exp.toml": _with("llamacpp", "tensor_split = [1.0, -0.5]").replace(
                "model =", 'backend = "llamacpp"\nmodel ='
            )
        },
    ),
    Case(
        "failed share above 1",
        V,
        2,
        ("measurement.max_failed_share = 1.5", "[0, 1]"),
        {"exp.toml": _with("measurement", "max_failed_share = 1.5")},
    ),
    Case(
        "a traffic rate so small the run takes days warns",
        V,
        0,
        ("warning: traffic.rate = 1e-05", "days", "OK"),
        {"exp.toml": _with("traffic", 'mode = "poisson"\nrate = 0.00001')},
    ),
    *(
        Case(
            f"a traffic rate whose cycle would outlast a year ({how})",
            args,
            2,
            ("traffic.rate = 1e-300", "1.16e+297 days per cycle", "longer than a cycle may last (365 days)"),
            {"exp.toml": _with("traffic", 'mode = "poisson"\nrate = 1e-300')},
        )
        for how, args in [("validate", V), ("run", R)]
    ),
    # --- the environment, checked up front and bounded (class 3)
    Case(
        "--ray address where nothing listens",
        ("run", "exp.toml", "--ray", "127.0.0.1:1", "--out", "out"),
        2,
        ("--ray 127.0.0.1:1", "nothing listens", "ray start --head"),
        {"exp.toml": OK},
        needs=lambda: None if importlib.util.find_spec("ray") else "ray is not installed",
    ),
    Case(
        "a Hub model neither cached nor reachable",
        R,
        2,
        ("model = 'someorg/some-model'", "not in the local Hugging Face cache", "cannot be reached"),
        {"exp.toml": OK.replace("random:tiny-llama", "someorg/some-model")},
        subprocess=True,
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": "hf-cache"},
    ),
    Case(
        "--resume and --resume-add together",
        ("run", "exp.toml", "--resume", "a", "--resume-add", "a", "--out", "out"),
        2,
        ("--resume and --resume-add exclude each other",),
        {"exp.toml": OK},
    ),
    # --- names
    Case(
        "misspelled random: built-in",
        V,
        2,
        ("unknown built-in", "did you mean 'random:tiny-llama'"),
        {"exp.toml": 'model = "random:tiny-lama"\n'},
    ),
    Case(
        "local model path that does not exist",
        V,
        2,
        ("model = './models/nope'", "local path not found"),
        {"exp.toml": 'model = "./models/nope"\n'},
    ),
    Case(
        "absolute model path that does not exist",
        V,
        2,
        ("model = '/no/such/model'", "local path not found"),
        {"exp.toml": 'model = "/no/such/model"\n'},
    ),
    Case(
        "adapter path that does not exist",
        V,
        2,
        ("adapter", "local path not found"),
        {"exp.toml": 'adapter = "./lora/nope"\n' + OK},
    ),
    Case(
        "unknown backend",
        V,
        2,
        ("backend = 'pytorh'", "not an installed backend"),
        {"exp.toml": 'backend = "pytorh"\n' + OK},
    ),
    Case(
        "unknown meter name",
        V,
        2,
        ("measurement.energy_meter = 'joulemeter'", "not an installed energy meter"),
        {"exp.toml": OK.replace('"none"', '"joulemeter"')},
    ),
    Case(
        "missing optional dependency (adapter needs peft)",
        V,
        2,
        ("adapter", "peft", "pip install peft"),
        {"exp.toml": 'adapter = "./lora"\n' + OK, "lora/adapter_config.json": "{}", "hide/sitecustomize.py": HIDE},
        subprocess=True,
        env={"PYTHONPATH": "hide", "LEM_TEST_HIDE": "peft"},
        needs=_needs_pytorch,
    ),
    # --- prompt files: found at validation, before a model loads
    Case(
        "dataset path that is a directory",
        V,
        2,
        ("dataset.path = 'prompts'", "is a directory"),
        {"exp.toml": _with("dataset", 'source = "file"\npath = "prompts"'), "prompts/a.jsonl": ""},
    ),
    Case(
        "dataset path that does not exist",
        V,
        2,
        ("dataset.path = 'nope.jsonl'", "file not found"),
        {"exp.toml": _with("dataset", 'source = "file"\npath = "nope.jsonl"')},
    ),
    Case(
        "prompt file with a broken line",
        R,
        2,
        ("line 2", "not valid JSON"),
        {"exp.toml": _with("dataset", 'source = "file"\npath = "p.jsonl"'), "p.jsonl": '{"text": "a"}\n{"text": \n'},
    ),
    Case(
        "prompt file without the field",
        V,
        2,
        ("dataset.field = 'question'", "no such field"),
        {
            "exp.toml": _with("dataset", 'source = "file"\npath = "p.jsonl"\nfield = "question"'),
            "p.jsonl": '{"text": "a"}\n',
        },
    ),
    Case(
        "prompt file not UTF-8",
        V,
        2,
        ("p.txt", "not UTF-8"),
        {"exp.toml": _with("dataset", 'source = "file"\npath = "p.txt"'), "p.txt": b"caf\xe9\n"},
    ),
    Case(
        "empty prompt file",
        V,
        2,
        ("p.txt", "no prompts"),
        {"exp.toml": _with("dataset", 'source = "file"\npath = "p.txt"'), "p.txt": "\n\n"},
    ),
    # --- sweeps
    Case(
        "sweep of 0 values",
        V,
        2,
        ("sweep.batching.batch_size", "empty list"),
        {"exp.toml": OK + '[sweep]\n"batching.batch_size" = []\n'},
    ),
    Case(
        "sweep value that is not a list",
        V,
        2,
        ("sweep.seed", "must be a list"),
        {"exp.toml": OK + "[sweep]\nseed = 3\n"},
    ),
    Case(
        "sweep key that is not a key",
        V,
        2,
        ("batching.batchsize", "unknown key"),
        {"exp.toml": OK + '[sweep]\n"batching.batchsize" = [1, 2]\n'},
    ),
    Case(
        "sweep key below a value",
        V,
        2,
        ("sweep.model.name", "'model' is a value"),
        {"exp.toml": OK + '[sweep]\n"model.name" = ["a"]\n'},
    ),
    Case(
        "sweep too large to expand",
        V,
        2,
        ("125000 experiments", "more than 100000"),
        {
            "exp.toml": OK + f'[sweep]\nseed = {list(range(50))}\n"dataset.num_prompts" = {list(range(1, 51))}\n'
            f'"generation.max_output_tokens" = {list(range(1, 51))}\n'
        },
    ),
    Case(
        "large sweep, stdin not a terminal, no --yes",
        R,
        2,
        ("101 experiments", "pass --yes"),
        {"exp.toml": _sweep(101)},
    ),
    Case(
        "sweep of TOML dates",
        V,
        2,
        ("seed", "expected int, got date"),
        {"exp.toml": OK + "[sweep]\nseed = [1979-05-27]\n"},
    ),
    Case(
        "sweep of presets",
        V,
        2,
        ("sweep.preset", "cannot be swept", "--preset"),
        {"exp.toml": OK + '[sweep]\npreset = ["quick-test", "benchmark"]\n'},
    ),
    # --- command-line options
    Case(
        "--set preset= unknown is checked like --preset",
        (*V, "--set", "preset=quikc-test"),
        2,
        ("preset = 'quikc-test'", "did you mean 'quick-test'"),
        {"exp.toml": OK},
    ),
    Case(
        "--set preset= contradicting --preset",
        (*V, "--preset", "quick-test", "--set", "preset=benchmark"),
        2,
        ("preset='benchmark' contradicts --preset quick-test",),
        {"exp.toml": OK},
    ),
    Case(
        "--set with invalid TOML",
        (*V, "--set", "measurement.cycles=[1,"),
        2,
        ("measurement.cycles", "not a TOML value"),
        {"exp.toml": OK},
    ),
    Case(
        "--set onto a key whose parent is a value",
        (*V, "--set", "model.name=x"),
        2,
        ("model.name", "'model' is a value"),
        {"exp.toml": OK},
    ),
    Case("--set without =", (*V, "--set", "cycles"), 2, ("--set", "expected KEY=VALUE"), {"exp.toml": OK}),
    Case(
        "--set with an empty key part", (*V, "--set", "generation..top_p=1"), 2, ("not a dotted key",), {"exp.toml": OK}
    ),
    Case("--python not BACKEND=PYTHON", (*R, "--python", "pytorch"), 2, ("expected BACKEND=PYTHON",), {"exp.toml": OK}),
    Case(
        "--python that does not exist",
        (*R, "--python", "pytorch=/no/python"),
        2,
        ("not an executable",),
        {"exp.toml": OK},
    ),
    Case(
        "--python pointing at a non-python",
        (*R, "--python", f"pytorch={shutil.which('true')}"),
        2,
        ("cannot start lem's worker", "lem-core installed"),
        {"exp.toml": OK},
    ),
    # --- where results go
    Case(
        "--out below a file",
        ("run", "exp.toml", "--out", "afile/sub"),
        2,
        ("afile/sub", "cannot create the run directory"),
        {"exp.toml": OK, "afile": "x"},
    ),
    Case(
        "--out that is a file",
        ("run", "exp.toml", "--out", "afile"),
        2,
        ("afile", "is a file"),
        {"exp.toml": OK, "afile": "x"},
    ),
    Case(
        "--out without permission",
        ("run", "exp.toml", "--out", "ro/out"),
        2,
        ("ro/out", "Permission denied"),
        {"exp.toml": OK, "ro/.keep": ""},
        needs=_needs_unprivileged,
    ),
    Case("--resume with ..", (*R, "--resume", ".."), 2, ("--resume '..'", "one directory name"), {"exp.toml": OK}),
    Case(
        "--resume of a path",
        (*R, "--resume", "../elsewhere"),
        2,
        ("one directory name", "not a path"),
        {"exp.toml": OK, "elsewhere/run.json": "{}"},
    ),
    Case(
        "--resume of an absolute path", (*R, "--resume", "/tmp"), 2, ("--resume '/tmp'", "not a path"), {"exp.toml": OK}
    ),
    Case(
        "--resume of a run that does not exist",
        (*R, "--resume", "20990101-000000-abcd"),
        2,
        ("no run directory",),
        {"exp.toml": OK, "out/.keep": ""},
    ),
    Case(
        "--resume of a directory lem did not write",
        (*R, "--resume", "mine"),
        2,
        ("not a run lem wrote", "run.json"),
        {"exp.toml": OK, "out/mine/precious.txt": "keep me"},
    ),
    Case(
        "named meter that cannot work here",
        R,
        2,
        ("energy_meter = nvml", "cannot work here"),
        {"exp.toml": OK.replace('"none"', '"nvml"')},
        needs=_needs_nvml,
    ),
    # --- reading results
    Case("results dir that is a file", ("results", "list", "afile"), 2, ("afile", "is a file"), {"afile": "x"}),
    Case("results dir that does not exist", ("results", "list", "nope"), 2, ("nope", "no such results directory")),
    Case(
        "aggregate of an empty directory",
        ("results", "aggregate", "--dir", "empty"),
        2,
        ("no experiments found",),
        {"empty/.keep": ""},
    ),
    Case(
        "show of a run that does not exist",
        ("results", "show", "nope", "--dir", "results"),
        2,
        ("no such run",),
        {"results/.keep": ""},
    ),
    Case(
        "list: binary summary",
        ("results", "list", "results"),
        0,
        ("damaged", "summary.json", "cannot be read"),
        damage=("*/000-*/summary.json", b"\x00\xff\x00\xfe"),
    ),
    Case(
        "list: truncated summary",
        ("results", "list", "results"),
        0,
        ("damaged", "summary.json", "not valid JSON"),
        damage=("*/000-*/summary.json", '{"schema_version": 2, "kind": "summ'),
    ),
    Case(
        "list: summary of the wrong JSON shape",
        ("results", "list", "results"),
        0,
        ("damaged", "not a JSON object"),
        damage=("*/000-*/summary.json", "[1, 2, 3]\n"),
    ),
    Case(
        "list: summary whose figures are not a table",
        ("results", "list", "results"),
        0,
        ("damaged", "figures"),
        damage=("*/000-*/summary.json", _summary_damaged_shape()),
    ),
    Case(
        "list: damaged failure file",
        ("results", "list", "results"),
        0,
        ("damaged", "failure.json"),
        damage=("*/001-*/failure.json", "{"),
    ),
    Case(
        "show: damaged summary, the rest still shown",
        ("results", "show", "results"),
        1,
        ("summary.json", "not valid JSON", "skipped"),
        damage=("*/000-*/summary.json", "{"),
    ),
    Case(
        "aggregate: truncated cycle",
        ("results", "aggregate", "--dir", "results"),
        1,
        ("cycle-001.json", "not valid JSON", "skipped"),
        damage=("*/000-*/cycle-001.json", '{"schema_version": 2, "ki'),
    ),
    Case(
        "aggregate: cycle of the wrong shape",
        ("results", "aggregate", "--dir", "results"),
        1,
        ("cycle-001.json", "damaged: 'requests' is missing, expected a list", "skipped", "recomputed"),
        damage=("*/000-*/cycle-001.json", _cycle_damaged_shape()),
    ),
    Case(
        "aggregate: a directory where summary.json goes",
        ("results", "aggregate", "--dir", "results"),
        1,
        ("summary.json", "is a directory", "skipped"),
        damage=("*/000-*/summary.json", None),
    ),
    Case(
        "aggregate: NaN in a cycle",
        ("results", "aggregate", "--dir", "results"),
        1,
        ("cycle-001.json", "NaN is not a JSON number", "skipped"),
        damage=("*/000-*/cycle-001.json", '{"schema_version": 2, "kind": "cycle", "cycle": NaN}'),
    ),
    Case(
        "aggregate: timeline row with more cells than its header",
        ("results", "aggregate", "--dir", "results"),
        0,
        ("timeline-001.csv", "more cells than the header", "null"),
        damage=("*/000-*/timeline-001.csv", "t_s,device,power_w\n0.0,0,100.0,7\n"),
    ),
    Case(
        "aggregate: NaN in a timeline",
        ("results", "aggregate", "--dir", "results"),
        0,
        ("timeline-001.csv", "power_w = nan", "null"),
        damage=("*/000-*/timeline-001.csv", "t_s,device,power_w\n0.0,0,nan\n"),
    ),
    Case(
        "list: JSON nested too deeply",
        ("results", "list", "results"),
        0,
        ("damaged", "summary.json", "nested too deeply"),
        damage=("*/000-*/summary.json", "[" * 100_000 + "]" * 100_000),
    ),
    Case(
        "list: a figure that is text",
        ("results", "list", "results"),
        0,
        ("damaged", "figures.output_tokens_per_s"),
        damage=("*/000-*/summary.json", _summary_with_figure("x")),
    ),
    Case(
        "pool: cycle of the wrong shape",
        ("results", "aggregate", "--pool", "pool.json"),
        2,
        ("cycle-001.json", "damaged: 'requests' is missing, expected a list", "nothing pooled"),
        damage=("*/000-*/cycle-001.json", _cycle_damaged_shape()),
    ),
    Case(
        "export: cycle of the wrong shape, the other cycles exported",
        ("results", "export", "results", "--level", "cycle"),
        0,
        ("cycle-001.json", "damaged: 'requests' is missing, expected a list", "skipped", "001-batch_size=2"),
        damage=("*/000-*/cycle-001.json", _cycle_damaged_shape()),
    ),
    Case(
        "export: request rows of a cycle of the wrong shape",
        ("results", "export", "results", "--level", "request", "--format", "jsonl"),
        0,
        ("cycle-001.json", "damaged: 'requests' is text, expected a list", "skipped"),
        damage=(
            "*/000-*/cycle-001.json",
            json.dumps({"schema_version": SCHEMA_VERSION, "kind": "cycle", "cycle": 1, "requests": "x"}),
        ),
    ),
    Case(
        "export: a figure that is not a table",
        ("results", "export", "results"),
        0,
        ("summary.json", "damaged", "its figures are left out"),
        damage=("*/000-*/summary.json", _summary_with_figure(3)),
    ),
    Case(
        "compare: a figure that is text",
        ("results", "compare", "{run}", "--dir", "results"),
        2,
        ("summary.json", "damaged", "left out", "at least 2 experiments"),
        damage=("*/000-*/summary.json", _summary_with_figure({"mean": "fast"})),
    ),
    # --- readers on damaged or unusual files (issue 29, class 5): the file named, the rest kept
    Case(
        "plot: a summary whose figures are empty",
        ("results", "plot", "results", "--kind", "cycles"),
        1,
        ("summary.json", "damaged", "'figures' is an empty table"),
        damage=("*/000-*/summary.json", _summary_with(figures={})),
    ),
    Case(
        "plot: a summary whose cycles field is text",
        ("results", "plot", "results"),
        1,
        ("summary.json", "damaged", "'cycles' is text, expected a whole number"),
        damage=("*/000-*/summary.json", _summary_with(cycles="two")),
    ),
    Case(
        "plot: a timeline with more cells than its header",
        ("results", "plot", "results", "--kind", "timeline"),
        1,
        ("timeline-001.csv", "damaged meter timeline", "its cycle is kept"),
        damage=("*/000-*/timeline-001.csv", "t_s,device,power_w\n0.0,0,100.0,7\n"),
    ),
    Case(
        "plot: a destination under a file",
        ("results", "plot", "results", "--out", "afile/plots", "--kind", "cdf"),
        2,
        ("afile", "cannot write cdf.png", "Not a directory", "choose a writable --out"),
        {"afile": ""},
        real_run=True,
    ),
    Case(
        "report: a summary whose figures are a list",
        ("report", "{run}", "--dir", "results"),
        0,
        ("report.html",),
        damage=("*/000-*/summary.json", _summary_with(figures=[1, 2])),
    ),
    Case(
        "aggregate: setup.json deleted",
        ("results", "aggregate", "--dir", "results"),
        1,
        ("setup.json: missing", "cannot be aggregated without it", "recomputed"),
        remove=("*/000-*/setup.json",),
    ),
    Case(
        "aggregate: a timeline that spoils its cycle is blamed, the cycle kept",
        ("results", "aggregate", "--dir", "results"),
        0,
        ("timeline-001.csv", "not a finite number", "cycle 1 is kept", "000-batch_size=1-"),
        damage=("*/000-*/timeline-001.csv", _overflowing_timeline()),
    ),
    Case(
        "export: a summary without figures, which list calls damaged",
        ("results", "export", "results"),
        0,
        ("summary.json", "damaged", "'figures' is missing, expected a table", "its figures are left out"),
        damage=("*/000-*/summary.json", _summary_with(figures=...)),
    ),
    Case(
        "export: setup.json deleted",
        ("results", "export", "results", "--level", "cycle"),
        0,
        ("setup.json: missing", "cannot be computed without it", "001-batch_size=2"),
        remove=("*/000-*/setup.json",),
    ),
    Case(
        "export: Parquet names the cycle file whose number is text, the rest written",
        ("results", "export", "results", "--level", "cycle", "--format", "parquet", "--out", "t.parquet"),
        0,
        (
            "cycle-001.json",
            "damaged: 'cycle' is text, expected a cycle number (0 to 999999)",
            "skipped",
            "t.parquet: 1 rows",
        ),
        damage=("*/000-*/cycle-001.json", lambda doc: doc | {"cycle": str(doc["cycle"])}),
    ),
    Case(
        # A whole number no cycle file is named with: its timeline-NNN.csv cannot even be looked for.
        "aggregate: a cycle number past the files' names",
        ("results", "aggregate", "--dir", "results"),
        1,
        ("cycle-001.json", "damaged: 'cycle' is a number, expected a cycle number (0 to 999999)", "skipped"),
        damage=("*/000-*/cycle-001.json", lambda doc: doc | {"cycle": 2**70}),
    ),
    Case(
        # A count of the wrong type is caught by summary_damage first (the case below); a stored config value is
        # any type a key may have, so only the Parquet column's type can tell.
        "export: Parquet names the summary whose config value is text, the rest written",
        ("results", "export", "results", "--format", "parquet", "--out", "t.parquet"),
        0,
        (
            "summary.json",
            "config.dataset.num_prompts is text where the other rows have a number",
            "left out",
            "t.parquet: 1",
        ),
        damage=(
            "*/000-*/summary.json",
            lambda doc: doc | {"config": doc["config"] | {"dataset.num_prompts": "two"}},
        ),
    ),
    Case(
        "export: Parquet names the summary whose count is text, the rest written",
        ("results", "export", "results", "--format", "parquet", "--out", "t.parquet"),
        0,
        ("summary.json", "'failed_requests' is text, expected a whole number", "left out", "t.parquet: 2"),
        damage=("*/000-*/summary.json", _real_with(failed_requests="none")),
    ),
    # --- cycle files whose fields are not of the types lem writes (issue 29, class 5): each field checked
    Case(
        "export: a cycle whose metrics are text",
        ("results", "export", "results", "--level", "cycle"),
        0,
        ("cycle-001.json", "damaged: 'metrics' is text, expected a table", "skipped", "001-batch_size=2"),
        damage=("*/000-*/cycle-001.json", _real_with(metrics="fast")),
    ),
    Case(
        "export: a cycle whose metrics are a list",
        ("results", "export", "results", "--level", "cycle", "--format", "jsonl"),
        0,
        ("cycle-001.json", "damaged: 'metrics' is a list, expected a table", "skipped", "001-batch_size=2"),
        damage=("*/000-*/cycle-001.json", _real_with(metrics=[1, 2])),
    ),
    Case(
        "aggregate: a cycle whose metrics are a number",
        ("results", "aggregate", "--dir", "results"),
        1,
        ("cycle-001.json", "damaged: 'metrics' is a number, expected a table", "skipped", "recomputed"),
        damage=("*/000-*/cycle-001.json", _real_with(metrics=7)),
    ),
    Case(
        "aggregate: a cycle whose energy block is text",
        ("results", "aggregate", "--dir", "results"),
        1,
        ("cycle-001.json", "damaged: 'energy' is text, expected a table", "skipped", "recomputed"),
        damage=("*/000-*/cycle-001.json", _real_with(energy="none")),
    ),
    Case(
        "export: a cycle whose energy window is a list",
        ("results", "export", "results", "--level", "cycle"),
        0,
        ("cycle-001.json", "damaged: 'energy_window' is a list, expected a table", "skipped"),
        damage=("*/000-*/cycle-001.json", _real_with(energy_window=[])),
    ),
    Case(
        "export: a cycle whose window duration is text",
        ("results", "export", "results", "--level", "cycle"),
        0,
        ("cycle-001.json", "damaged: 'window.duration_s' is text, expected a number", "skipped"),
        damage=("*/000-*/cycle-001.json", _window_with(duration_s="2s")),
    ),
    Case(
        "export: request rows of a cycle whose first request's events are text",
        ("results", "export", "results", "--level", "request"),
        0,
        ("cycle-001.json", "damaged: 'requests[0].events' is text, expected a list of [time, tokens]", "skipped"),
        damage=("*/000-*/cycle-001.json", _first_request_with(events="none")),
    ),
    Case(
        "aggregate: a cycle whose request id is text",
        ("results", "aggregate", "--dir", "results"),
        1,
        ("cycle-001.json", "damaged: 'requests[0].id' is text, expected a whole number", "skipped"),
        damage=("*/000-*/cycle-001.json", _first_request_with(id="0")),
    ),
    Case(
        "aggregate: a cycle whose warnings are text",
        ("results", "aggregate", "--dir", "results"),
        1,
        ("cycle-001.json", "damaged: 'warnings' is text, expected a list of text", "skipped"),
        damage=("*/000-*/cycle-001.json", _real_with(warnings="none")),
    ),
    Case(
        "pool: a cycle whose passes are text",
        ("results", "aggregate", "--pool", "pool.json"),
        2,
        ("cycle-001.json", "damaged: 'passes' is text, expected a whole number from 1", "nothing pooled"),
        damage=("*/000-*/cycle-001.json", _real_with(passes="1")),
    ),
    Case(
        "plot: a cycle whose metrics are text is named, the rest drawn",
        ("results", "plot", "results", "--kind", "cycles"),
        1,
        ("cycle-001.json", "damaged: 'metrics' is text, expected a table", "left out"),
        damage=("*/000-*/cycle-001.json", _real_with(metrics="fast")),
    ),
    Case(
        "export: --out names a directory where a table file goes",
        ("results", "export", "results", "--out", "adir"),
        2,
        ("--out adir is a directory", "--format csv writes one file"),
        {"adir/x": ""},
        real_run=True,
    ),
    Case(
        "export --strict: refuses with one line naming the damaged file",
        ("results", "export", "results", "--level", "cycle", "--strict"),
        2,
        ("nothing exported (--strict)", "1 damaged result file", "cycle-001.json", "not valid JSON"),
        damage=("*/000-*/cycle-001.json", '{"schema_version": 2, "ki'),
    ),
    Case(
        "resume: a directory where a cycle file goes",
        ("run", "run.toml", "--out", "results", "--resume", "{run}", "--in-process", "--no-report", "-q"),
        2,
        ("cycle-001.json", "is a directory", "--resume"),
        {"run.toml": RUN},
        damage=("*/000-*/cycle-001.json", None),
        remove=("*/000-*/summary.json",),
    ),
    Case(
        "resume: stored experiment.toml not UTF-8",
        ("run", "run.toml", "--out", "results", "--resume", "{run}", "--in-process", "--no-report", "-q"),
        2,
        ("experiment.toml", "cannot be read", "start a new run"),
        {"run.toml": RUN},
        damage=("*/000-*/experiment.toml", b'model = "\xff"\n'),
    ),
    Case(
        "resume: a finished experiment whose experiment.toml is missing is not re-run (it deleted its results)",
        ("run", "run.toml", "--out", "results", "--resume", "{run}", "--in-process", "--no-report", "-q"),
        2,
        ("experiment.toml is missing", "results are kept"),
        {"run.toml": RUN},
        remove=("*/000-*/experiment.toml",),
    ),
    Case(
        "resume: stored experiment.toml is a directory",
        ("run", "run.toml", "--out", "results", "--resume", "{run}", "--in-process", "--no-report", "-q"),
        2,
        ("experiment.toml", "cannot be read", "Is a directory"),
        {"run.toml": RUN},
        damage=("*/000-*/experiment.toml", None),
    ),
]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real two-experiment run, made by the real command; cases copy it and damage a file."""
    if _needs_pytorch():
        pytest.skip("lem-backend-pytorch is not installed")
    where = tmp_path_factory.mktemp("real-run")
    (where / "run.toml").write_text(RUN)
    done = subprocess.run(
        [sys.executable, "-m", "lem", "run", "run.toml", "--out", "results", "-q"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    return where / "results"


def _error_lines(text: str) -> list[str]:
    # click's own usage errors add a usage line and a "Try ... --help" line around the one error line.
    # Warnings that come before the error (what was left out) are not error lines.
    skip = ("Usage:", "Try ", "lem: warning:")
    return [line for line in text.splitlines() if line.strip() and not line.startswith(skip)]


def _backend_missing(case: Case) -> str | None:
    """A case that sets a backend this session has not installed cannot reach that backend's checks."""
    for content in case.files.values():
        text = content.decode(errors="replace") if isinstance(content, bytes) else content
        for name in re.findall(r'^backend = "(\w+)"', text, re.M):
            ours = (Path(__file__).parents[2] / f"lem-backend-{name}").is_dir()  # a misspelt name is the test
            if ours and importlib.util.find_spec(f"lem_backend_{name}") is None:
                return f"lem-backend-{name} is not installed in this session"
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    why = (case.needs() if case.needs else None) or _backend_missing(case)
    if why:
        pytest.skip(why)
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    if case.id == "--out without permission":
        (tmp_path / "ro").chmod(0o500)
    damaged = case.damage is not None or bool(case.remove)
    if damaged or case.real_run:
        shutil.copytree(request.getfixturevalue("real_run"), tmp_path / "results")
        for gone in case.remove:
            for path in (tmp_path / "results").glob(gone):
                path.unlink()
    if case.damage:
        pattern, content = case.damage
        targets = list((tmp_path / "results").glob(pattern))
        if not targets:  # the failure file: make experiment 001 a failed one first
            target_dir = next((tmp_path / "results").glob(pattern.rsplit("/", 1)[0]))
            (target_dir / "summary.json").unlink()
            targets = [target_dir / pattern.rsplit("/", 1)[1]]
        for target in targets:
            if content is None:
                target.unlink(missing_ok=True)
                (target / "someone's").mkdir(parents=True)
            elif callable(content):  # the real file, changed
                target.write_text(json.dumps(content(json.loads(target.read_text()))))
            else:
                target.write_bytes(content if isinstance(content, bytes) else content.encode())
    kept = sorted(p for p in (tmp_path / "results").rglob("*") if p.is_file()) if damaged else []
    run_id = next(p.name for p in (tmp_path / "results").iterdir()) if damaged else ""
    case = attrs.evolve(case, args=tuple(a.replace("{run}", run_id) for a in case.args))
    monkeypatch.chdir(tmp_path)
    if case.subprocess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **case.env}
        if "PYTHONPATH" in case.env and os.environ.get("PYTHONPATH"):  # keep the path lem itself may come from
            env["PYTHONPATH"] = case.env["PYTHONPATH"] + os.pathsep + os.environ["PYTHONPATH"]
        done = subprocess.run(
            [sys.executable, "-m", "lem", *case.args], capture_output=True, text=True, timeout=300, env=env
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        result = CliRunner().invoke(cli, list(case.args), catch_exceptions=True)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        code, out, err = result.exit_code, result.stdout, result.stderr
    text = out + err
    assert "Traceback" not in text
    assert code == case.code, text
    for word in case.words:
        assert word in text, f"{word!r} not in {text!r}"
    if case.code == 2:
        assert len(_error_lines(err)) == 1, err
    # Never lose results: every file of the damaged run is still there (a recomputed summary is rewritten).
    assert [p for p in kept if not p.is_file()] == []


def test_resume_of_another_directory_leaves_it_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory a bad --resume names keeps its files (the run once deleted them)."""
    (tmp_path / "exp.toml").write_text(OK)
    precious = tmp_path / "out" / "mine" / "precious.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("keep me")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["run", "exp.toml", "--out", "out", "--resume", "mine"])
    assert result.exit_code == 2
    assert sorted(p.name for p in precious.parent.iterdir()) == ["precious.txt"]
    assert precious.read_text() == "keep me"


def test_sweep_keys_and_values_never_nest_directories(tmp_path: Path) -> None:
    """Experiment ids are one directory name, whatever a sweep's keys and values hold."""
    from lem.configfile.loading import experiment_id

    for values in (
        {"pytorch.x/../../y": "../../etc"},
        {"model": "/abs/path"},
        {"a.b": ".."},
        {"k": "a\\b\0c"},
        {"\u2215unicode": "\u2044slash"},
    ):
        name = experiment_id(0, values)
        assert "/" not in name and "\\" not in name and "\0" not in name and not name.startswith(".")
        assert (tmp_path / name).parent == tmp_path


def test_set_preset_applies_the_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--set preset=NAME`` merges that preset under the file, as ``--preset NAME`` does (it was once ignored)."""
    (tmp_path / "exp.toml").write_text(OK)
    monkeypatch.chdir(tmp_path)
    runs = [
        CliRunner().invoke(cli, ["config", "show", "exp.toml", *extra]) for extra in ((), ("--preset", "quick-test"))
    ]
    via_set = CliRunner().invoke(cli, ["config", "show", "exp.toml", "--set", "preset=quick-test"])
    assert via_set.exit_code == 0, via_set.output
    assert via_set.stdout == runs[1].stdout != runs[0].stdout


def test_report_names_a_file_nested_too_deeply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_run: Path) -> None:
    """``lem report`` over a summary.json nested too deeply to parse still writes the report, naming the file."""
    shutil.copytree(real_run, tmp_path / "results")
    (summary,) = (tmp_path / "results").glob("*/000-*/summary.json")
    summary.write_text("[" * 100_000 + "]" * 100_000)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["report", summary.parent.parent.name, "--out", "r.html"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r.html").read_text()
    assert "summary.json" in html and "nested too deeply" in html


def _resume(where: Path, toml: str, *flags: str) -> subprocess.CompletedProcess[str]:
    (where / "again.toml").write_text(toml)
    run_id = next(p.name for p in (where / "results").iterdir())
    return subprocess.run(
        [sys.executable, "-m", "lem", "run", "again.toml", "--out", "results", "--no-report", "-q", *flags, run_id],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.parametrize(
    ("sweep", "flag", "words"),
    [
        ("[2, 1]", "--resume", ("does not expand to experiment(s) 000-batch_size=1",)),
        ("edited", "--resume", ("was run with a different config", "max_output_tokens: 3 then, 4 now")),
        ("[1]", "--resume", ("does not expand to experiment(s) 001-",)),
        ("[1, 2, 4]", "--resume", ("has experiment(s) the run does not", "--resume-add")),
        ("[1]", "--resume-add", ("does not expand to experiment(s) 001-",)),
    ],
    ids=["reordered", "edited", "shrunk", "grown", "shrunk with --resume-add"],
)
def test_resume_refuses_another_study(
    real_run: Path, tmp_path: Path, sweep: str, flag: str, words: tuple[str, ...]
) -> None:
    """A resume with a file that expands to other experiments is refused in one line; nothing is lost."""
    shutil.copytree(real_run, tmp_path / "results")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "results").rglob("*"))
    toml = RUN.replace("max_output_tokens = 3", "max_output_tokens = 4") if sweep == "edited" else RUN
    done = _resume(tmp_path, toml.replace("[1, 2]", sweep if sweep != "edited" else "[1, 2]"), flag)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(_error_lines(done.stderr)) == 1, done.stderr
    for word in words:
        assert word in done.stderr
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "results").rglob("*")) == before


def test_resume_add_extends_the_run_and_keeps_what_it_had(real_run: Path, tmp_path: Path) -> None:
    shutil.copytree(real_run, tmp_path / "results")
    done = _resume(tmp_path, RUN.replace("[1, 2]", "[1, 2, 3]"), "--resume-add")
    assert done.returncode == 0, done.stderr
    run_dir = next((tmp_path / "results").iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert len(record["experiments"]) == 3 and set(record["experiment_configs"]) == set(record["experiments"])
    assert all((run_dir / i / "summary.json").is_file() for i in record["experiments"])


@pytest.mark.parametrize(
    ("what", "doc", "words"),
    [
        ("experiments is text", {"experiments": "000-a"}, "'experiments' is not a list of experiment ids"),
        ("experiments are numbers", {"experiments": [1, 2]}, "'experiments' is not a list of experiment ids"),
        ("experiments are missing", {"experiments": None}, "'experiments' is not a list of experiment ids"),
        ("experiment_configs is a list", {"experiment_configs": []}, "'experiment_configs' is not a table"),
    ],
)
def test_a_resume_refuses_a_damaged_run_record(
    real_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str, doc: dict[str, object], words: str
) -> None:
    """run.json says which experiments the run holds; one that cannot say is named, and nothing is touched."""
    shutil.copytree(real_run, tmp_path / "results")
    record = next((tmp_path / "results").glob("*/run.json"))
    record.write_text(json.dumps(json.loads(record.read_text()) | doc))
    before = {p: p.read_bytes() for p in (tmp_path / "results").rglob("*") if p.is_file()}
    (tmp_path / "run.toml").write_text(RUN)
    monkeypatch.chdir(tmp_path)
    args = ["run", "run.toml", "--out", "results", "--resume", record.parent.name, "--in-process", "--no-report", "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = _error_lines(result.output)
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "run.json" in lines[0] and words in lines[0] and "start a new run" in lines[0], lines
    assert {p: p.read_bytes() for p in (tmp_path / "results").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("kept", ["degraded", "damaged"])
def test_a_resume_that_keeps_an_experiment_not_ok_exits_1(real_run: Path, tmp_path: Path, kept: str) -> None:
    """Exit 0 means every experiment of the run is ok: one kept from an earlier attempt counts too."""
    shutil.copytree(real_run, tmp_path / "results")
    summary = next((tmp_path / "results").glob("*/000-*/summary.json"))
    if kept == "degraded":
        doc = json.loads(summary.read_text())
        doc.update(status="degraded", status_reason="1 of 2 requests failed (50%), above the limit")
        summary.write_text(json.dumps(doc))
        words: tuple[str, ...] = ("000-", "DEGRADED in an earlier attempt, kept", "1 of 2 requests failed")
    else:
        summary.write_text("{not json")
        words = ("000-", "DAMAGED in an earlier attempt, kept", "summary.json: not valid JSON")
    before = summary.read_bytes()
    done = _resume(tmp_path, RUN, "--resume")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    assert "001-batch_size=2" not in done.stderr  # the ok one is skipped quietly (-q)
    assert summary.read_bytes() == before  # kept as it was, never re-run over


# --- readers on damaged or unusual files (issue 29, class 5) -------------------------------------------------


def _lem(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lem", *args], cwd=where, capture_output=True, text=True, timeout=300)


SUMMARY_DAMAGE = {
    "no figures table": (_summary_with(figures=...), "'figures' is missing, expected a table of figures"),
    "figures empty": (_summary_with(figures={}), "'figures' is an empty table, expected a table of figures"),
    "figures a list": (_summary_with(figures=[1, 2]), "'figures' is a list, expected a table"),
    "cycles text": (_summary_with(cycles="two"), "'cycles' is text, expected a whole number"),
    "cycles true": (_summary_with(cycles=True), "'cycles' is true/false, expected a whole number"),
    "a mean that is text": (
        _summary_with(figures={"ttft_s.p50": {"n": 1, "mean": "fast"}}),
        "'figures.ttft_s.p50.mean' is text, expected a number",
    ),
    "values not a list": (
        _summary_with(figures={"ttft_s.p50": {"n": 1, "values": "1,2"}}),
        "'figures.ttft_s.p50.values' is text, expected a list of numbers",
    ),
    "methods text": (_summary_with(methods="nvml"), "'methods' is text, expected a table"),
}


@pytest.mark.parametrize("damage", list(SUMMARY_DAMAGE), ids=list(SUMMARY_DAMAGE))
def test_list_show_export_and_plot_call_the_same_summaries_damaged(real_run: Path, tmp_path: Path, damage: str) -> None:
    """What `lem results list` calls damaged, show, export and plot name too (one check: summary_damage)."""
    shutil.copytree(real_run, tmp_path / "results")
    text, why = SUMMARY_DAMAGE[damage]
    [summary] = (tmp_path / "results").glob("*/000-*/summary.json")
    summary.write_text(text)
    listed = _lem(tmp_path, "results", "list", "results", "--json")
    assert listed.returncode == 0, listed.stderr
    status = {
        row["id"].split("/")[1][:3]: (row["status"], row.get("reason") or "") for row in json.loads(listed.stdout)
    }
    assert (
        status["000"][0] == "damaged"
        and why in status["000"][1]
        and str(summary.relative_to(tmp_path)) in status["000"][1]
    )
    assert status["001"][0] == "ok"
    exported = _lem(tmp_path, "results", "export", "results", "--format", "jsonl")
    assert exported.returncode == 0 and "Traceback" not in exported.stderr, exported.stderr
    assert f"{summary.relative_to(tmp_path)}: damaged" in exported.stderr and why in exported.stderr
    rows = {json.loads(line)["experiment_id"][:3]: json.loads(line) for line in exported.stdout.splitlines()}
    assert rows["000"]["status"] == "damaged" and rows["000"]["cycles"] is None  # nothing of it trusted
    assert rows["001"]["status"] == "ok" and rows["001"]["cycles"] == 1
    shown = _lem(tmp_path, "results", "show", "results")
    assert shown.returncode == 1 and "Traceback" not in shown.stderr, shown.stderr
    assert f"{summary.relative_to(tmp_path)}: damaged: {why}" in shown.stderr and "001-batch_size=2" in shown.stdout
    plotted = _lem(tmp_path, "results", "plot", "results", "--kind", "cdf", "--out", "plots")
    assert plotted.returncode == 1 and "Traceback" not in plotted.stderr, plotted.stderr
    assert f"{summary.relative_to(tmp_path)}: damaged: {why}" in plotted.stderr
    assert (tmp_path / "plots" / "cdf.png").stat().st_size > 0  # the rest is still drawn


def test_a_timeline_that_spoils_its_cycle_is_blamed_and_the_cycle_kept(real_run: Path, tmp_path: Path) -> None:
    shutil.copytree(real_run, tmp_path / "results")
    [exp_dir] = (tmp_path / "results").glob("*/000-*")
    (exp_dir / "timeline-001.csv").write_text(_overflowing_timeline())
    done = _lem(tmp_path, "results", "aggregate", "--dir", "results")
    assert done.returncode == 0, done.stderr
    assert "timeline-001.csv: damaged meter timeline" in done.stderr and "cycle-001.json" not in done.stderr
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["cycles"] == 1  # the cycle is kept ...
    assert summary["figures"]["output_tokens_per_s"]["n"] == 1
    steady = summary["figures"]["steady_state.j_per_output_token"]
    assert steady["mean"] is None and steady["reason"] == "no power timeline for this cycle"  # ... less its timeline
    assert any("timeline-001.csv: damaged meter timeline" in w for w in summary["warnings"])
    exported = _lem(tmp_path, "results", "export", "results", "--level", "cycle", "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    assert "timeline-001.csv: damaged meter timeline" in exported.stderr
    cycles = [json.loads(line) for line in exported.stdout.splitlines()]
    assert sorted(c["experiment_id"][:3] for c in cycles) == ["000", "001"]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs that the test fills, so a plot or an export runs out of space for real (needs root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root")
    where = tmp_path / "full"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(where)]).returncode != 0:
        pytest.skip("this container may not mount a tmpfs")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize(
    "args",
    [
        ("results", "plot", "results", "--kind", "cdf", "--out", "full/plots"),
        ("results", "export", "results", "--level", "request", "--format", "parquet", "--out", "full/r.parquet"),
        ("results", "export", "results", "--level", "request", "--out", "full/r.csv"),
    ],
    ids=["plot", "parquet", "csv"],
)
def test_a_full_destination_is_one_line_and_leaves_no_file(
    real_run: Path, tmp_path: Path, full_disk: Path, args: tuple[str, ...]
) -> None:
    shutil.copytree(real_run, tmp_path / "results")
    fd = os.open(full_disk / "ballast", os.O_WRONLY | os.O_CREAT)  # fill it to the last byte: nothing more fits
    with pytest.raises(OSError, match="No space left"):
        for _ in range(64):
            os.write(fd, b"x" * 1024)
    os.close(fd)
    done = _lem(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(_error_lines(done.stderr)) == 1, done.stderr
    assert (
        f"no space left on device in {Path(args[-1]).parent}" in done.stderr
        and "nothing partial was left" in done.stderr
    )
    left = sorted(p.name for p in full_disk.rglob("*") if p.is_file() and p.name != "ballast")
    assert left == [], left  # no 0-byte file, no temporary
