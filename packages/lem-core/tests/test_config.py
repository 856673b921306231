"""Loading experiment files: strict structure, every error class, precedence, sweeps, round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from lem.config import ExperimentConfig
from lem.configfile.loading import dumps, load, load_one
from lem.errors import ConfigError
from lem.hookspecs import hookimpl
from lem.testing import registered
from lem.types import Problem


class _Backend:
    """A throwaway backend plugin so backend names validate; it never loads anything."""

    @hookimpl
    def load_model(self, backend: str, config: ExperimentConfig) -> None:
        return None


@pytest.fixture(autouse=True)
def fake_backend():
    """A throwaway backend, so these tests do not depend on which real backends are installed."""
    from lem import plugins

    with registered(_Backend(), "fakeback"):
        plugins._dists["fakeback"] = "lem-backend-fakeback"
        yield
        plugins._dists.pop("fakeback", None)


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    """Write an experiment file; it runs on the throwaway backend unless it names one."""
    if not any(line.startswith("backend") for line in text.splitlines()):
        text = 'backend = "fakeback"\n' + text
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, **kwargs)
    return [p.format() for p in info.value.problems]


def test_minimal_file_gets_defaults(tmp_path):
    assert ExperimentConfig(model="m").backend == "pytorch"
    cfg = load_one(write(tmp_path, 'model = "random:tiny-llama"\n'))
    assert cfg.generation.max_output_tokens == 128
    assert cfg.batching.strategy == "static"
    assert cfg.measurement.energy_meter == "auto"


def test_every_table_structures(tmp_path):
    cfg = load_one(
        write(
            tmp_path,
            """
model = "m"
precision = "float16"
seed = 7
adapter = "lora-dir"
[dataset]
source = "synthetic"
num_prompts = 10
input_length = 64
[generation]
max_output_tokens = 32
min_output_tokens = 4
temperature = 0.7
top_p = 0.9
top_k = 50
min_p = 0.05
repetition_penalty = 1.1
no_repeat_ngram_size = 3
do_sample = true
num_beams = 1
length_penalty = 1.0
early_stopping = false
ignore_eos = true
[batching]
batch_size = 8
strategy = "sorted_dynamic"
max_tokens_per_batch = 4096
[traffic]
mode = "poisson"
rate = 2.5
[measurement]
warmup = "cv"
cycles = 5
idle_seconds = 2
energy_meter = "none"
sampling_interval_ms = 50
devices = [0, 1]
[sharding]
tensor_parallel_size = 2
[quantization]
method = "gptq"
""",
        )
    )
    assert cfg.precision == "float16" and cfg.seed == 7 and cfg.adapter == "lora-dir"
    assert cfg.generation.top_k == 50 and cfg.generation.do_sample is True
    assert cfg.batching.max_tokens_per_batch == 4096
    assert cfg.traffic.rate == 2.5
    # An integer is accepted where a float is expected (TOML writes 2, not 2.0), as a float.
    assert cfg.measurement.idle_seconds == 2.0 and isinstance(cfg.measurement.idle_seconds, float)
    assert cfg.measurement.devices == (0, 1)
    assert cfg.sharding.tensor_parallel_size == 2
    assert cfg.quantization.method == "gptq"


def test_toml_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "syntax.toml"
    path.write_text('model = "x"\n[generation\n')
    [line] = problems_of(path)
    assert "TOML syntax error" in line and "line 2, column 12" in line


def test_missing_file(tmp_path):
    [line] = problems_of(tmp_path / "nope.toml")
    assert "file not found" in line


def test_unknown_key_suggests_the_right_one(tmp_path):
    [line] = problems_of(write(tmp_path, 'model = "m"\n[generation]\nmax_output_tokns = 3\n'))
    assert "generation.max_output_tokns" in line
    assert "did you mean 'max_output_tokens'" in line


def test_unknown_table_suggests_the_right_one(tmp_path):
    [line] = problems_of(write(tmp_path, 'model = "m"\n[generaton]\ntop_p = 0.5\n'))
    assert "generaton" in line and "did you mean [generation]" in line


@pytest.mark.parametrize(
    ("toml", "key", "expected"),
    [
        ('seed = "1"', "seed", "expected int, got str"),
        ("[generation]\nmax_output_tokens = true", "generation.max_output_tokens", "got a boolean"),
        ("[generation]\ntemperature = 'hot'", "generation.temperature", "expected float"),
        ("[batching]\nstrategy = 'random'", "batching.strategy", "expected one of 'static'"),
        ('precision = "fp64"', "precision", "expected one of 'float32'"),
        ("generation = 3", "generation", ""),
    ],
)
def test_wrong_types(tmp_path, toml, key, expected):
    lines = problems_of(write(tmp_path, f'model = "m"\n{toml}\n'))
    assert any(key in line and expected in line for line in lines), lines


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[batching]\nbatch_size = -2", "batching.batch_size = -2"),
        ("[generation]\ntop_p = 1.5", "generation.top_p = 1.5"),
        ("[generation]\ntemperature = -0.1", "generation.temperature = -0.1"),
        ("[measurement]\ncycles = 0", "measurement.cycles = 0"),
        ("[traffic]\nmode = 'poisson'", "traffic.rate"),
        ("[generation]\nmin_output_tokens = 9\nmax_output_tokens = 4", "generation.min_output_tokens"),
    ],
)
def test_values_out_of_range(tmp_path, toml, key):
    lines = problems_of(write(tmp_path, f'model = "m"\n{toml}\n'))
    assert any(key in line for line in lines), lines


def _uninstalled_backend() -> str:
    """A backend the project publishes that this environment lacks (each nox session installs a few)."""
    from lem.plugins import KNOWN_DISTRIBUTIONS, backend_names

    missing = [n for n, d in KNOWN_DISTRIBUTIONS.items() if d.startswith("lem-backend-") and n not in backend_names()]
    if not missing:
        pytest.skip("every published backend is installed here")
    return missing[0]


def test_unknown_backend_lists_installed_and_names_distribution(tmp_path):
    name = _uninstalled_backend()
    [line] = problems_of(write(tmp_path, f'model = "m"\nbackend = "{name}"\n'))
    assert f"backend = '{name}'" in line
    assert "installed: " in line and "fakeback" in line.split("installed: ")[1]
    assert f"pip install lem-backend-{name}" in line


def test_misspelled_backend_gets_did_you_mean(tmp_path):
    [line] = problems_of(write(tmp_path, 'model = "m"\nbackend = "fakebak"\n'))
    assert "did you mean 'fakeback'?" in line


def test_unknown_meter(tmp_path):
    # A name no published distribution has: the test holds whichever meters are installed.
    [line] = problems_of(write(tmp_path, 'model = "m"\n[measurement]\nenergy_meter = "joulemeter"\n'))
    assert "measurement.energy_meter = 'joulemeter'" in line and "is not an installed energy meter" in line


def test_section_of_uninstalled_backend_is_a_warning(tmp_path):
    name = _uninstalled_backend()
    loaded = load(write(tmp_path, f'model = "m"\n[{name}]\nmax_batch_size = 8\n'))
    assert [w.path for w in loaded.warnings] == [name]
    assert f"pip install lem-backend-{name}" in loaded.warnings[0].format()
    # The table is passed through untouched for its backend.
    assert loaded.experiments[0].config.options_for(name) == {"max_batch_size": 8}


def test_every_published_plugin_is_known_by_its_distribution():
    """Each packages/* distribution's entry points are in KNOWN_DISTRIBUTIONS, so a config naming one that is
    not installed says what to install."""
    from lem.configfile.documents import read_toml
    from lem.plugins import KNOWN_DISTRIBUTIONS

    root = Path(__file__).resolve().parents[2]
    published = {}
    for pyproject in root.glob("lem-*/pyproject.toml"):
        project = read_toml(pyproject)["project"]
        for name in project.get("entry-points", {}).get("lem", {}):
            if project["name"] != "lem-core":
                published[name] = project["name"]
    if not published:
        pytest.skip("not run from a checkout of the repository")
    assert published == KNOWN_DISTRIBUTIONS


def test_unknown_preset(tmp_path):
    [line] = problems_of(write(tmp_path, 'model = "m"\npreset = "quick-tst"\n'))
    assert "unknown preset" in line and "did you mean 'quick-test'" in line


def test_empty_sweep_list(tmp_path):
    [line] = problems_of(write(tmp_path, 'model = "m"\n[sweep]\n"batching.batch_size" = []\n'))
    assert "sweep.batching.batch_size" in line and "empty list" in line


def test_all_problems_reported_at_once(tmp_path):
    lines = problems_of(
        write(
            tmp_path,
            """
model = "m"
backend = "pytorc"
precison = "float16"
[generation]
top_p = 1.5
max_output_tokens = "many"
[batching]
batch_size = -1
""",
        )
    )
    joined = "\n".join(lines)
    for key in ("backend", "precison", "generation.top_p", "generation.max_output_tokens", "batching.batch_size"):
        assert key in joined
    assert len(lines) == 5


def test_problem_line_has_file_key_value_and_hint(tmp_path):
    path = write(tmp_path, 'model = "m"\n[generation]\ntop_p = 1.5\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: error: generation.top_p = 1.5: must be in (0, 1]"


def test_precedence_cli_over_file_over_preset(tmp_path):
    path = write(tmp_path, 'model = "m"\npreset = "quick-test"\n[generation]\nmax_output_tokens = 20\n')
    cfg = load_one(path)
    assert cfg.generation.max_output_tokens == 20  # file beats preset
    assert cfg.dataset.num_prompts == 4  # preset beats defaults
    assert cfg.preset == "quick-test"
    cfg = load_one(path, overrides=["generation.max_output_tokens=7", "dataset.num_prompts=9"])
    assert cfg.generation.max_output_tokens == 7 and cfg.dataset.num_prompts == 9  # CLI beats both
    cfg = load_one(path, preset="throughput")  # CLI preset beats the file's preset
    assert cfg.batching.batch_size == 64 and cfg.preset == "throughput"


def test_override_values_are_typed_like_toml(tmp_path):
    path = write(tmp_path, 'model = "m"\n')
    cfg = load_one(path, overrides=["generation.ignore_eos=true", "generation.top_p=0.5", "name=plain words"])
    assert cfg.generation.ignore_eos is True and cfg.generation.top_p == 0.5 and cfg.name == "plain words"


def test_sweep_expands_to_cartesian_product_with_stable_ids(tmp_path):
    text = 'model = "m"\n[sweep]\n"batching.batch_size" = [1, 8]\n"generation.max_output_tokens" = [16, 32, 64]\n'
    first = load(write(tmp_path, text))
    again = load(write(tmp_path, text, "copy.toml"))
    assert len(first.experiments) == 6
    assert [e.id for e in first.experiments] == [e.id for e in again.experiments]
    assert len({e.id for e in first.experiments}) == 6
    combos = {(e.config.batching.batch_size, e.config.generation.max_output_tokens) for e in first.experiments}
    assert combos == {(b, t) for b in (1, 8) for t in (16, 32, 64)}
    assert first.experiments[0].sweep_values == {"batching.batch_size": 1, "generation.max_output_tokens": 16}


def test_sweep_errors_name_the_experiment_key(tmp_path):
    lines = problems_of(write(tmp_path, 'model = "m"\n[sweep]\n"batching.batch_size" = [1, -4]\n'))
    assert lines == ["error: batching.batch_size = -4: must be >= 1"]


def test_round_trip_load_show_load(tmp_path):
    path = write(
        tmp_path,
        """
model = "m"
preset = "benchmark"
adapter = "a"
[generation]
top_k = 5
[measurement]
devices = [0]
[tensorrt]
max_batch_size = 8
""",
    )
    cfg = load_one(path)
    shown = write(tmp_path, dumps(cfg), "shown.toml")
    again = load_one(shown)
    assert again == cfg
    assert dumps(again) == dumps(cfg)


def test_problem_format_without_path():
    assert Problem("warning", "", "careful").format("f.toml") == "f.toml: warning: careful"


def test_missing_prompt_file_is_caught_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [line] = problems_of(write(tmp_path, 'model = "m"\n[dataset]\nsource = "file"\npath = "nope.jsonl"\n'))
    assert "dataset.path = 'nope.jsonl': file not found" in line
    (tmp_path / "nope.jsonl").write_text('{"prompt": "hi"}\n')
    assert load_one(tmp_path / "exp.toml").dataset.path == "nope.jsonl"
