"""lem.options: the one checker of plugin tables, through the real ``lem config validate``; README tables.

Each bad value runs the real CLI on a real TOML file: exit 2, one error line naming the dotted key,
no traceback. The README test holds every package's generated option table to its declaration.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lem import options
from lem.cli.main import cli
from lem.options import Option, Table
from lem.plugins import get_plugin_manager

PACKAGES = Path(__file__).resolve().parents[2]

#: (backend or meter, its table as TOML, the words the one error line must hold)
BAD: list[tuple[str, str, tuple[str, ...]]] = [
    # unknown key, with a did-you-mean
    ("pytorch", "attn_implementaton = 'sdpa'", ("pytorch.attn_implementaton", "did you mean 'attn_implementation'")),
    ("server", "engine = 'vllm'\nprot = 8000", ("server.prot", "did you mean 'port'")),
    ("llamacpp", "n_ctxx = 8", ("llamacpp.n_ctxx", "did you mean 'n_ctx'")),
    ("tensorrt", "max_batch_sizes = 8", ("tensorrt.max_batch_sizes", "did you mean 'max_batch_size'")),
    # wrong type, string for a number
    ("server", "engine = 'vllm'\nport = '8000'", ("server.port = '8000'", "must be an integer")),
    ("llamacpp", "n_ctx = '512'", ("llamacpp.n_ctx = '512'", "must be an integer")),
    ("tensorrt", "max_batch_size = 2.5", ("tensorrt.max_batch_size = 2.5", "must be an integer")),
    ("pytorch", "use_cache = 'yes'", ("pytorch.use_cache = 'yes'", "must be true or false")),
    ("codecarbon", "force_cpu_power_w = '90'", ("codecarbon.force_cpu_power_w", "must be int or float")),
    # out of range
    ("server", "engine = 'vllm'\nport = 70000", ("server.port = 70000", "must be in [0, 65535]")),
    ("server", "engine = 'vllm'\nrequest_timeout_s = -1", ("server.request_timeout_s", "must be in (0, 604800]")),
    ("tensorrt", "gpu_memory_utilization = 1.5", ("tensorrt.gpu_memory_utilization = 1.5", "must be in (0, 1]")),
    ("llamacpp", "n_batch = 0", ("llamacpp.n_batch = 0", "must be >= 1")),
    ("llamacpp", "n_ctx = -5", ("llamacpp.n_ctx = -5", "must be >= 0")),
    ("tensorrt", "max_num_tokens = 9223372036854775807", ("tensorrt.max_num_tokens", "below 2**31")),
    # NaN and infinity
    ("server", "engine = 'vllm'\nstartup_timeout_s = nan", ("server.startup_timeout_s = nan", "finite")),
    ("server", "engine = 'vllm'\nrequest_timeout_s = inf", ("server.request_timeout_s = inf", "finite")),
    ("codecarbon", "force_ram_power_w = inf", ("codecarbon.force_ram_power_w = inf", "finite")),
    # a nested table where a map of strings is meant, a string where a list is meant
    ("server", "engine = 'vllm'\n[server.env]\nA = {B = 1}", ("server.env", "must be a table of strings")),
    ("server", "command = 'vllm serve'", ("server.command = 'vllm serve'", "must be a list of strings")),
    ("server", "engine = 'vllm'\nhealth_path = 'health'", ("server.health_path = 'health'", "matching")),
    # choices, and nested declared tables
    ("llamacpp", "split_mode = 'diagonal'", ("llamacpp.split_mode", "'none', 'layer' or 'row'")),
    ("tensorrt", "[tensorrt.quantization]\nmethd = 'fp8'", ("tensorrt.quantization.methd", "did you mean 'method'")),
    ("pytorch", "device_map = 'gpu:0'", ("pytorch.device_map = 'gpu:0'", "cuda:")),
]


def _installed(name: str) -> bool:
    return get_plugin_manager().get_plugin(name) is not None


def _document(name: str, table: str) -> str:
    meter = name == "codecarbon"
    head = 'model = "random:tiny-llama"\n'
    head += '[measurement]\nenergy_meter = "codecarbon"\n' if meter else f'backend = "{name}"\n'
    head += '[codecarbon]\ncountry_iso_code = "FRA"\n' if meter else f"[{name}]\n"
    return head + table + "\n"


@pytest.mark.parametrize(("name", "table", "words"), BAD, ids=[f"{b[0]}-{b[2][0]}" for b in BAD])
def test_a_bad_table_value_is_one_line_through_lem_config_validate(
    name: str, table: str, words: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _installed(name):
        pytest.skip(f"the {name} plugin is not installed")
    (tmp_path / "exp.toml").write_text(_document(name, table))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["config", "validate", "exp.toml"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    assert result.exit_code == 2, text
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, text
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"


GOOD: list[tuple[str, str]] = [
    ("server", "engine = 'vllm'\nport = 0\nstartup_timeout_s = 30\nenv = {A = 'b'}\nhealth_path = '/health'"),
    ("pytorch", "device_map = 'cuda:0'\ntorch_compile = false\nmax_memory = {0 = '70GiB', cpu = 100}"),
    ("llamacpp", "n_gpu_layers = -1\ntensor_split = [1, 0.5]\ntype_k = 'q8_0'"),
    ("tensorrt", "gpu_memory_utilization = 1\ncuda_graph_batch_sizes = [1, 2, 4]"),
]


@pytest.mark.parametrize(("name", "table"), GOOD, ids=[g[0] for g in GOOD])
def test_values_at_their_bounds_are_accepted(name: str, table: str, tmp_path: Path) -> None:
    if not _installed(name):
        pytest.skip(f"the {name} plugin is not installed")
    (tmp_path / "exp.toml").write_text(_document(name, table))
    result = CliRunner().invoke(cli, ["config", "validate", str(tmp_path / "exp.toml")])
    assert result.exit_code == 0, result.output


def _tables() -> list[tuple[str, Table]]:
    found = []
    for name, plugin in get_plugin_manager().list_name_plugin():
        found += [(name, t) for t in options.tables_of(plugin)]
    return found


def test_every_published_backend_and_codecarbon_declares_a_table() -> None:
    names = {name for name, _ in _tables()}
    for name in ("pytorch", "vllm", "llamacpp", "server", "tensorrt", "codecarbon"):
        if _installed(name):
            assert name in names


README = {
    "pytorch": "lem-backend-pytorch",
    "vllm": "lem-backend-vllm",
    "llamacpp": "lem-backend-llamacpp",
    "server": "lem-backend-server",
    "tensorrt": "lem-backend-tensorrt",
    "codecarbon": "lem-energy-codecarbon",
}


@pytest.mark.parametrize(
    ("module", "attribute"),
    [
        ("lem_backend_pytorch.options", "TABLE"),
        ("lem_backend_pytorch.continuous.options", "TABLE"),
        ("lem_backend_vllm.options", "TABLE"),
        ("lem_backend_llamacpp.options", "TABLE"),
        ("lem_backend_server.options", "TABLE"),
        ("lem_backend_tensorrt.options", "TABLE"),
        ("lem_energy_codecarbon.options", "TABLE"),
    ],
)
def test_the_readme_option_table_matches_the_declaration(module: str, attribute: str) -> None:
    """Regenerate a README's block with ``lem plugins --options NAME --markdown`` when this fails."""
    table: Table = getattr(pytest.importorskip(module), attribute)
    readme = PACKAGES / README[table.name.split(".")[0]] / "README.md"
    assert options.readme_problems(readme.read_text(encoding="utf-8"), table) == []


def test_a_readme_row_that_disagrees_is_named() -> None:
    table = Table("demo", (Option("port", int, "the port", ge=0, le=65535),))
    block = options.BEGIN.format(name="demo") + "\n" + options.markdown(table) + options.END
    assert options.readme_problems(block, table) == []
    wrong = block.replace("in [0, 65535]", "in [0, 99999]")
    found = options.readme_problems(wrong, table)
    assert len(found) == 2 and "99999" in found[0] and "65535" in found[1]
    assert options.readme_problems("no table", table) == ["no '<!-- lem-options demo -->' block"]


def test_every_preset_passes_its_backends_table() -> None:
    pm = get_plugin_manager()
    tables = {t.name: t for _, t in _tables()}
    for presets in pm.hook.register_presets():
        for name, preset in presets.items():
            for key, value in preset.items():
                if key in tables and isinstance(value, Mapping):
                    assert options.check(tables[key], value) == [], name


def test_plugins_options_prints_the_declaration_as_json_and_a_table() -> None:
    if not _installed("llamacpp"):
        pytest.skip("the llamacpp plugin is not installed")
    result = CliRunner().invoke(cli, ["plugins", "--options", "llamacpp", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in json.loads(result.stdout)["llamacpp"]}
    assert rows["n_ctx"] == {
        "key": "n_ctx",
        "type": "int",
        "default": "",
        "bounds": ">= 0",
        "reaches": "Llama(n_ctx=)",
        "doc": "context length (0: the model's training context)",
    }
    shown = CliRunner().invoke(cli, ["plugins", "--options", "llamacpp"], env={"COLUMNS": "240"})
    assert shown.exit_code == 0 and "[llamacpp]" in shown.stdout and "Llama(n_ctx=)" in shown.stdout
    missing = CliRunner().invoke(cli, ["plugins", "--options", "llamacp"])
    assert missing.exit_code == 2 and "did you mean 'llamacpp'" in missing.stderr
    assert "Traceback" not in missing.output


def _demo(a: int, b: str = "", *args: Any, **kwargs: Any) -> None:
    """A library call with two named arguments."""


def test_check_library_reads_the_installed_signature_and_skips_a_missing_library() -> None:
    here = f"{__name__}:_demo"
    table = Table(
        "demo",
        (Option("a", int, "a", call="demo"), Option("c", str, "c", call="demo", argument="bee", aliases=("b",))),
        calls={"demo": here},
    )
    assert options.check_library(table) == []
    renamed = Table("demo", (Option("x", int, "x", call="demo", argument="aa"),), calls={"demo": here})
    (problem,) = options.check_library(renamed, "demo 1.0")
    assert problem.path == "x" and "demo 1.0's demo has no argument 'aa'" in problem.message
    assert "did you mean 'a'" in problem.message
    gone = Table("demo", (Option("x", int, "x", call="demo"),), calls={"demo": "no_such_library_here:f"})
    assert options.check_library(gone) == []
    assert importlib.util.find_spec("no_such_library_here") is None


def test_unapplied_generation_keys_are_warnings_only_when_set() -> None:
    from lem.config import GenerationConfig

    not_applied = {"min_p": "use top_p", "no_repeat_ngram_size": "use repetition_penalty"}
    assert options.unapplied(GenerationConfig(), not_applied, "X") == []
    (w,) = options.unapplied(GenerationConfig(min_p=0.1), not_applied, "X")
    assert (w.severity, w.path, w.message, w.hint) == (
        "warning",
        "generation.min_p",
        "is not supported by X and is ignored",
        "use top_p",
    )


def test_did_you_mean_names_the_closest_or_lists_them() -> None:
    assert options.did_you_mean("prot", ["port", "host"]) == "did you mean 'port'?"
    assert options.did_you_mean("zzz", ["port", "host"]) == "known keys: host, port"
    assert options.did_you_mean("zzz", ["port"], otherwise="see the docs") == "see the docs"


def test_every_numeric_key_of_every_installed_table_declares_bounds() -> None:
    """A new key gets the generic checks (finite, below 2**31, no strings) for free; its bounds it must declare."""
    import typing

    from lem import options as lem_options
    from lem.plugins import get_plugin_manager

    def numeric(tp: object) -> bool:
        if tp in (int, float):
            return True
        return any(numeric(a) for a in typing.get_args(tp) if a is not type(None) and typing.get_origin(tp) is not dict)

    unbounded = [
        f"{t.name}.{o.key}"
        for _, plugin in get_plugin_manager().list_name_plugin()
        for t in lem_options.tables_of(plugin)
        for o in lem_options._walk(t)
        if numeric(o.type) and not o.choices and all(b is None for b in (o.ge, o.gt, o.le, o.lt))
    ]
    assert unbounded == []
    assert get_plugin_manager().list_name_plugin()  # the check ran over installed plugins
