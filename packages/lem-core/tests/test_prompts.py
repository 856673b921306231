"""Prompt sources, part 1: synthetic prompts, the builtin set, validation and the TOML path (lem.prompts)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lem.config import DatasetConfig
from lem.configfile.loading import config_from_dict
from lem.configfile.validation import validate_config
from lem.errors import PromptError
from lem.prompts import PromptSet, load_prompts, token_stats
from lem.prompts.builtin import SUBSETS, read_builtin


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path) -> Iterator[Any]:
    """The tiny Llama's own tokenizer (no BOS added by encode; has a chat template)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        yield AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_llama: Path) -> Iterator[Any]:
    """The same tokenizer, made to add a BOS on encode, as Llama and many others do."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        from tokenizers.processors import TemplateProcessing
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tiny_llama)
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)]
        )
        assert tok.encode("hi")[0] == tok.bos_token_id
        yield tok


def _lengths(ps: PromptSet) -> list[int]:
    return [p.n_tokens for p in ps.prompts]


# --- synthetic ---------------------------------------------------------------------------------------


def test_synthetic_fixed_length_is_exact_and_round_trips(tokenizer: Any) -> None:
    ps = load_prompts(DatasetConfig(num_prompts=20, input_length=64), tokenizer, seed=7)
    special = set(tokenizer.all_special_ids)
    assert len(ps.prompts) == 20
    for p in ps.prompts:
        assert p.token_ids is not None and len(p.token_ids) == p.n_tokens == 64
        assert not special & set(p.token_ids)
        assert all(0 <= i < len(tokenizer) for i in p.token_ids)
    # Backends that only take text see the same ids for every prompt that did not warn.
    if not ps.warnings:
        assert all(tokenizer.encode(p.text) == list(p.token_ids or ()) for p in ps.prompts)
    assert ps.stats["min"] == ps.stats["max"] == 64 and ps.stats["std"] == 0
    assert ps.description == "synthetic: 20 prompts, 64 tokens (fixed)"


def test_synthetic_counts_the_bos_the_tokenizer_adds(bos_tokenizer: Any) -> None:
    ps = load_prompts(DatasetConfig(num_prompts=5, input_length=16), bos_tokenizer, seed=1)
    for p in ps.prompts:
        assert p.token_ids is not None and len(p.token_ids) == 16
        assert p.token_ids[0] == bos_tokenizer.bos_token_id
        assert bos_tokenizer.bos_token_id not in p.token_ids[1:]
        assert bos_tokenizer.encode(p.text) == list(p.token_ids)


def test_synthetic_is_seeded(tokenizer: Any) -> None:
    d = DatasetConfig(num_prompts=3, input_length=32)
    a, b, c = (load_prompts(d, tokenizer, seed=s) for s in (1, 1, 2))
    assert a == b
    assert a.prompts != c.prompts


def test_synthetic_uniform_lengths_stay_in_range(tokenizer: Any) -> None:
    d = DatasetConfig(num_prompts=60, input_length_distribution="uniform", input_length_min=8, input_length_max=40)
    ps = load_prompts(d, tokenizer, seed=3)
    assert all(8 <= n <= 40 for n in _lengths(ps))
    assert len(set(_lengths(ps))) > 5
    assert all(p.token_ids is not None and len(p.token_ids) == p.n_tokens for p in ps.prompts)
    assert ps.stats == token_stats(_lengths(ps))
    assert "8-40 tokens (uniform)" in ps.description


def test_synthetic_normal_lengths_are_clipped_to_bounds(tokenizer: Any) -> None:
    d = DatasetConfig(
        num_prompts=80,
        input_length=30,
        input_length_distribution="normal",
        input_length_std=20.0,
        input_length_min=20,
        input_length_max=45,
    )
    lengths = _lengths(load_prompts(d, tokenizer, seed=5))
    assert min(lengths) == 20 and max(lengths) == 45
    assert 20 < sum(lengths) / len(lengths) < 45


def test_synthetic_max_input_tokens_clips_with_a_warning(tokenizer: Any) -> None:
    ps = load_prompts(DatasetConfig(num_prompts=4, input_length=50, max_input_tokens=20), tokenizer, seed=0)
    assert _lengths(ps) == [20] * 4
    assert any("clipped to dataset.max_input_tokens = 20" in w for w in ps.warnings)


def test_synthetic_chat_template_total_length_is_exact(tokenizer: Any) -> None:
    ps = load_prompts(DatasetConfig(num_prompts=6, input_length=48, apply_chat_template=True), tokenizer, seed=2)
    prefix = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    ).split("x")[0]
    for p in ps.prompts:
        assert p.token_ids is not None and len(p.token_ids) == p.n_tokens == 48
        assert p.text.startswith(prefix)
    assert "chat template" in ps.description


def test_synthetic_too_short_for_the_chat_template_is_an_error(tokenizer: Any) -> None:
    with pytest.raises(PromptError, match=r"too short for the .* chat template"):
        load_prompts(DatasetConfig(num_prompts=1, input_length=2, apply_chat_template=True), tokenizer, seed=0)


def test_synthetic_without_tokenizer_uses_vocab_size() -> None:
    ps = load_prompts(DatasetConfig(num_prompts=10, input_length=12), None, seed=0, vocab_size=50)
    for p in ps.prompts:
        assert p.text == "" and p.token_ids is not None and len(p.token_ids) == 12
        assert all(0 <= i < 50 for i in p.token_ids)
    with pytest.raises(PromptError, match="no tokenizer and no vocabulary size"):
        load_prompts(DatasetConfig(), None, seed=0)


def test_synthetic_stays_inside_a_smaller_model_vocabulary(tokenizer: Any) -> None:
    ps = load_prompts(DatasetConfig(num_prompts=5, input_length=30), tokenizer, seed=0, vocab_size=300)
    assert all(i < 300 for p in ps.prompts for i in p.token_ids or ())


def test_text_sources_need_a_tokenizer() -> None:
    with pytest.raises(PromptError, match="needs the model's tokenizer"):
        load_prompts(DatasetConfig(source="builtin"), None, seed=0, vocab_size=100)


# --- builtin -----------------------------------------------------------------------------------------


def test_builtin_set_is_large_varied_and_well_formed() -> None:
    entries = read_builtin()
    assert len(entries) >= 200
    assert len({e["id"] for e in entries}) == len({e["prompt"] for e in entries}) == len(entries)
    by_category = {s: [e for e in entries if e["category"] == s] for s in SUBSETS}
    assert sum(len(v) for v in by_category.values()) == len(entries)
    assert len(by_category["short"]) >= 50 and len(by_category["instruction"]) >= 50
    long_words = [len(e["prompt"].split()) for e in by_category["long"]]
    assert len(long_words) >= 20 and min(long_words) >= 150 and sum(w >= 300 for w in long_words) >= 15
    # Mixed order, so "first N" is a mix too.
    assert {e["category"] for e in entries[:20]} == set(SUBSETS)


def test_builtin_first_n_and_subsets(tokenizer: Any) -> None:
    ps = load_prompts(DatasetConfig(source="builtin", num_prompts=30), tokenizer, seed=0)
    assert [p.text for p in ps.prompts] == [e["prompt"] for e in read_builtin()[:30]]
    assert all(p.token_ids is None and p.n_tokens == len(tokenizer.encode(p.text)) for p in ps.prompts)
    long = load_prompts(DatasetConfig(source="builtin", subset="long", num_prompts=5), tokenizer, seed=0)
    assert long.stats["min"] > ps.stats["p50"]
    assert long.description.startswith("builtin 'long': 5 prompts")


def test_builtin_unknown_subset_is_an_error(tokenizer: Any) -> None:
    with pytest.raises(PromptError, match=r"dataset.subset = 'huge'.*short, instruction, long"):
        load_prompts(DatasetConfig(source="builtin", subset="huge"), tokenizer, seed=0)


def test_builtin_asking_for_too_many_warns_with_the_count_used(tokenizer: Any) -> None:
    n = len(read_builtin())
    ps = load_prompts(DatasetConfig(source="builtin", num_prompts=n + 50), tokenizer, seed=0)
    assert len(ps.prompts) == n
    assert ps.warnings == (f"dataset.num_prompts = {n + 50}, but builtin has only {n} prompts: using {n}",)


# --- statistics, validation and TOML ------------------------------------------------------------------


def test_token_stats_match_numpy_percentiles() -> None:
    np = pytest.importorskip("numpy")
    values = [5, 1, 9, 3, 3, 12, 40, 7]
    stats = token_stats(values)
    assert stats["n"] == 8 and stats["min"] == 1 and stats["max"] == 40
    for q in (50, 90, 99):
        assert stats[f"p{q}"] == pytest.approx(float(np.percentile(values, q)))
    # The sample std (n - 1), like every other figure; counts are integers.
    assert stats["std"] == pytest.approx(float(np.std(values, ddof=1)))
    assert all(type(stats[k]) is int for k in ("n", "min", "max"))


def _dataset_problems(dataset: dict[str, Any]) -> list[tuple[str, str]]:
    from lem.configfile.loading import structure

    config, problems = structure({"model": "random:tiny-llama", "dataset": dataset})
    assert config is not None, problems
    return [(p.severity, p.path) for p in validate_config(config=config) if p.path.startswith("dataset")]


def test_validation_of_dataset_companions() -> None:
    assert _dataset_problems({"source": "builtin", "subset": "huge"}) == [("error", "dataset.subset")]
    assert _dataset_problems({"source": "builtin", "subset": "long"}) == []
    assert ("warning", "dataset.path") in _dataset_problems({"path": "p.jsonl"})
    assert ("warning", "dataset.input_length_distribution") in _dataset_problems(
        {"source": "builtin", "input_length_distribution": "uniform", "input_length_min": 1, "input_length_max": 9}
    )
    assert ("warning", "dataset.max_input_tokens") in _dataset_problems({"input_length": 64, "max_input_tokens": 32})
    assert ("error", "dataset.path") in _dataset_problems({"source": "file"})


def test_dataset_table_from_a_toml_file_reaches_the_prompts(tmp_path: Path, tokenizer: Any) -> None:
    from lem.configfile.loading import load_one

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"q": f"question number {i}?"}) for i in range(10)))
    toml = tmp_path / "exp.toml"
    toml.write_text(
        'model = "random:tiny-llama"\nseed = 3\n[dataset]\nsource = "file"\n'
        f'path = "{prompts.as_posix()}"\nfield = "q"\nnum_prompts = 4\nsampling = "random"\n'
    )
    config = load_one(toml)
    ps = load_prompts(config.dataset, tokenizer, seed=config.seed)
    assert len(ps.prompts) == 4 and all(p.text.startswith("question number") for p in ps.prompts)
    assert ps.description.endswith("random sample (seed 3)")
    assert config_from_dict({"model": "random:tiny-llama", "dataset": {"format": "paragraphs"}})


def test_lem_prompts_imports_no_heavy_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lem.prompts, lem.prompts.files, lem.prompts.hub, lem.prompts.builtin, lem.prompts.synthetic;"
        "bad = [m for m in ('datasets', 'pyarrow', 'transformers', 'torch') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
