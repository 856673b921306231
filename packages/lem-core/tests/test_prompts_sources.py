"""Prompt sources, part 2: local files (JSONL, CSV, Parquet, text) and Hugging Face datasets (lem.prompts)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lem.config import DatasetConfig
from lem.errors import PromptError
from lem.prompts import load_prompts

ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "..."},
    {"instruction": "Translate to French.", "input": "Good morning, everyone.", "output": "..."},
    {"instruction": "Summarize the text.", "input": "The meeting moved to Tuesday.", "output": "..."},
    {"instruction": "Name a prime number.", "input": "", "output": "..."},
    {"instruction": "", "input": "", "output": "an empty row"},
]
EXPECTED = [
    "Give three tips for staying healthy.",
    "Translate to French.\n\nGood morning, everyone.",
    "Summarize the text.\n\nThe meeting moved to Tuesday.",
    "Name a prime number.",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        from transformers import AutoTokenizer

        yield AutoTokenizer.from_pretrained(tiny_llama)


def _file(path: Path, **kwargs: Any) -> DatasetConfig:
    return DatasetConfig(source="file", path=str(path), **kwargs)


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- files ---------------------------------------------------------------------------------------------


def test_jsonl_alpaca_style_instruction_plus_input(tmp_path: Path, tokenizer: Any) -> None:
    path = _jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    ps = load_prompts(_file(path, field="instruction", input_field="input"), tokenizer, seed=0)
    assert [p.text for p in ps.prompts] == EXPECTED
    assert [p.n_tokens for p in ps.prompts] == [len(tokenizer.encode(t)) for t in EXPECTED]
    assert all(p.token_ids is None for p in ps.prompts)
    assert ps.stats["n"] == 4 and ps.stats["max"] == max(p.n_tokens for p in ps.prompts)
    # The empty row and the shortfall are both reported, with the number used.
    assert any("1 empty rows" in w for w in ps.warnings)
    assert any("dataset.num_prompts = 100" in w and "using 4" in w for w in ps.warnings)
    # Without any field options, an alpaca-shaped file is recognised.
    assert load_prompts(_file(path), tokenizer, seed=0).prompts == ps.prompts


def test_jsonl_missing_field_lists_the_available_ones(tmp_path: Path, tokenizer: Any) -> None:
    path = _jsonl(tmp_path / "a.jsonl", ALPACA)
    with pytest.raises(PromptError) as info:
        load_prompts(_file(path, field="question_text"), tokenizer, seed=0)
    message = str(info.value)
    assert "dataset.field = 'question_text'" in message and "'instruction', 'input', 'output'" in message
    with pytest.raises(PromptError, match=r"dataset.input_field = 'context'"):
        load_prompts(_file(path, field="instruction", input_field="context"), tokenizer, seed=0)
    other = _jsonl(tmp_path / "b.jsonl", [{"body": "x"}])
    with pytest.raises(PromptError, match=r"dataset.field is not set.*available fields: 'body'"):
        load_prompts(_file(other), tokenizer, seed=0)


def test_missing_empty_and_broken_files(tmp_path: Path, tokenizer: Any) -> None:
    with pytest.raises(PromptError, match=r"dataset.path = '.*nope.jsonl': file not found"):
        load_prompts(_file(tmp_path / "nope.jsonl"), tokenizer, seed=0)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(PromptError, match="holds no prompts"):
        load_prompts(_file(tmp_path / "empty.jsonl"), tokenizer, seed=0)
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(PromptError, match="holds no prompts"):
        load_prompts(_file(tmp_path / "blank.txt"), tokenizer, seed=0)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(PromptError, match="line 2: not valid JSON"):
        load_prompts(_file(tmp_path / "bad.jsonl"), tokenizer, seed=0)
    (tmp_path / "p.dat").write_text("x")
    with pytest.raises(PromptError, match="cannot tell the format"):
        load_prompts(_file(tmp_path / "p.dat"), tokenizer, seed=0)
    # An explicit format overrides the extension.
    assert load_prompts(_file(tmp_path / "p.dat", format="text"), tokenizer, seed=0).prompts[0].text == "x"
    with pytest.raises(PromptError, match=r"dataset.field = 'n'.*holds a list"):
        load_prompts(_file(_jsonl(tmp_path / "l.jsonl", [{"n": [1, 2]}]), field="n"), tokenizer, seed=0)


def test_csv_and_tsv(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "alpaca.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ALPACA)
    ps = load_prompts(_file(path, field="instruction", input_field="input"), tokenizer, seed=0)
    assert [p.text for p in ps.prompts] == EXPECTED
    tsv = tmp_path / "q.tsv"
    tsv.write_text("id\tquestion\n1\tWhat is a watt?\n2\tWhy is the sea salty?\n", encoding="utf-8")
    ps = load_prompts(_file(tsv), tokenizer, seed=0)
    assert [p.text for p in ps.prompts] == ["What is a watt?", "Why is the sea salty?"]
    with pytest.raises(PromptError, match="available fields: 'id', 'question'"):
        load_prompts(_file(tsv, field="prompt"), tokenizer, seed=0)


def test_parquet(tmp_path: Path, tokenizer: Any) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "alpaca.parquet"
    pq.write_table(pa.Table.from_pylist(ALPACA), path)
    ps = load_prompts(_file(path, field="instruction", input_field="input"), tokenizer, seed=0)
    assert [p.text for p in ps.prompts] == EXPECTED
    with pytest.raises(PromptError, match="available fields: 'instruction', 'input', 'output'"):
        load_prompts(_file(path, field="prompt"), tokenizer, seed=0)


def test_parquet_without_pyarrow_names_the_package(tmp_path: Path, tokenizer: Any, monkeypatch: Any) -> None:
    # pyarrow is installed here; a None entry in sys.modules makes its import fail as if it were not.
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "p.parquet").write_bytes(b"PAR1")
    with pytest.raises(PromptError, match=r"Parquet needs pyarrow.*pip install pyarrow"):
        load_prompts(_file(tmp_path / "p.parquet"), tokenizer, seed=0)


def test_text_one_per_line_and_paragraphs(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("First prompt.\nSecond prompt,\nstill second?\n\nThird.\n", encoding="utf-8")
    lines = load_prompts(_file(path), tokenizer, seed=0)
    assert [p.text for p in lines.prompts] == ["First prompt.", "Second prompt,", "still second?", "Third."]
    paragraphs = load_prompts(_file(path, format="paragraphs"), tokenizer, seed=0)
    assert [p.text for p in paragraphs.prompts] == [
        "First prompt.\nSecond prompt,\nstill second?",
        "Third.",
    ]


def test_sampling_first_and_seeded_random(tmp_path: Path, tokenizer: Any) -> None:
    path = _jsonl(tmp_path / "many.jsonl", [{"prompt": f"Prompt number {i}."} for i in range(50)])
    first = load_prompts(_file(path, num_prompts=10), tokenizer, seed=0)
    assert [p.text for p in first.prompts] == [f"Prompt number {i}." for i in range(10)]
    a = load_prompts(_file(path, num_prompts=10, sampling="random"), tokenizer, seed=1)
    b = load_prompts(_file(path, num_prompts=10, sampling="random"), tokenizer, seed=1)
    c = load_prompts(_file(path, num_prompts=10, sampling="random"), tokenizer, seed=2)
    assert a == b and a.prompts != c.prompts and a.prompts != first.prompts
    assert len({p.text for p in a.prompts}) == 10


def test_truncation_and_chat_template(tmp_path: Path, tokenizer: Any) -> None:
    long_text = " ".join(f"word{i}" for i in range(300))
    path = _jsonl(tmp_path / "long.jsonl", [{"prompt": long_text}, {"prompt": "Short one."}])
    ps = load_prompts(_file(path, max_input_tokens=40), tokenizer, seed=0)
    assert ps.prompts[0].n_tokens <= 40 and ps.prompts[0].n_tokens == len(tokenizer.encode(ps.prompts[0].text))
    assert long_text.startswith(ps.prompts[0].text)
    assert ps.prompts[1].text == "Short one."
    assert "1 of 2 prompts truncated to dataset.max_input_tokens = 40" in ps.warnings

    chat = load_prompts(_file(path, max_input_tokens=60, apply_chat_template=True), tokenizer, seed=0)
    for p in chat.prompts:
        assert p.token_ids is not None and p.n_tokens == len(p.token_ids) <= 60
        # The template (and its generation prompt) survives truncation: the cut is in the user's text.
        assert p.text.endswith("<|assistant|>\n") and p.text.startswith("<|user|>\n")
        assert list(p.token_ids) == tokenizer.encode(p.text, add_special_tokens=False)
    assert "Short one." in chat.prompts[1].text
    with pytest.raises(PromptError, match="leaves no room for the prompt text"):
        load_prompts(_file(path, max_input_tokens=5, apply_chat_template=True), tokenizer, seed=0)


# --- Hugging Face datasets -------------------------------------------------------------------------------


def test_hub_dataset_saved_to_disk(tmp_path: Path, tokenizer: Any) -> None:
    datasets = pytest.importorskip("datasets")
    columns = {k: [row[k] for row in ALPACA] for k in ALPACA[0]}
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "ds"))
    ps = load_prompts(DatasetConfig(source="huggingface", name=str(tmp_path / "ds")), tokenizer, seed=0)
    assert [p.text for p in ps.prompts] == EXPECTED
    assert "field 'instruction' + 'input'" in ps.description

    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(columns), "test": datasets.Dataset.from_dict({"prompt": ["Hi?"]})}
    )
    splits.save_to_disk(str(tmp_path / "dd"))
    test = load_prompts(DatasetConfig(source="huggingface", name=str(tmp_path / "dd"), split="test"), tokenizer, seed=0)
    assert [p.text for p in test.prompts] == ["Hi?"]
    with pytest.raises(PromptError, match=r"dataset.split = 'validation'.*'train', 'test'"):
        load_prompts(
            DatasetConfig(source="huggingface", name=str(tmp_path / "dd"), split="validation"), tokenizer, seed=0
        )
    with pytest.raises(PromptError, match="available fields: 'instruction', 'input', 'output'"):
        load_prompts(DatasetConfig(source="huggingface", name=str(tmp_path / "ds"), field="text"), tokenizer, seed=0)
    datasets.Dataset.from_dict({"prompt": []}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(PromptError, match="the dataset is empty"):
        load_prompts(DatasetConfig(source="huggingface", name=str(tmp_path / "empty")), tokenizer, seed=0)


def test_hub_local_data_directory_through_load_dataset(tmp_path: Path, tokenizer: Any) -> None:
    pytest.importorskip("datasets")
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    _jsonl(data / "train.jsonl", ALPACA)
    d = DatasetConfig(source="huggingface", name=str(tmp_path / "repo"), num_prompts=2, sampling="random")
    ps = load_prompts(d, tokenizer, seed=4)
    assert len(ps.prompts) == 2 and {p.text for p in ps.prompts} <= set(EXPECTED)


@pytest.mark.slow  # a subprocess importing datasets and transformers: ~15 s on 2 cores
def test_hub_offline_uses_the_cache_and_says_when_not_cached(tmp_path: Path, tiny_llama: Path) -> None:
    pytest.importorskip("datasets")
    # A real subprocess: datasets reads the offline switches when it is imported. The cache entry of a
    # "downloaded" hub dataset is made without a hub: a local JSON build is moved to the directory layout
    # datasets uses for hub id 'lem-test/tiny' (<cache>/lem-test___tiny/<config>/<version>/<hash>/,
    # arrow files named <dataset>-<split>.arrow), which is what it reads back offline.
    _jsonl(tmp_path / "train.jsonl", ALPACA)
    code = f"""
import glob, os, shutil
import datasets
from transformers import AutoTokenizer
from lem.config import DatasetConfig
from lem.errors import PromptError
from lem.prompts import load_prompts

cache = os.environ["HF_DATASETS_CACHE"]
datasets.load_dataset("json", data_files={{"train": {str(tmp_path / "train.jsonl")!r}}})
built = glob.glob(os.path.join(cache, "json", "*", "*", "*", "json-train.arrow"))[0]
target = os.path.join(cache, "lem-test___tiny", "default", "0.0.0", "0")
shutil.copytree(os.path.dirname(built), target)
os.rename(os.path.join(target, "json-train.arrow"), os.path.join(target, "tiny-train.arrow"))

tok = AutoTokenizer.from_pretrained({str(tiny_llama)!r})
ps = load_prompts(DatasetConfig(source="huggingface", name="lem-test/tiny", field="instruction",
                                input_field="input"), tok, seed=0)
print("CACHED", [p.text for p in ps.prompts])
try:
    load_prompts(DatasetConfig(source="huggingface", name="lem-test/not-a-dataset"), tok, seed=0)
except PromptError as e:
    print("ERROR", e)
"""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert f"CACHED {EXPECTED!r}" in out.stdout, out
    assert "ERROR dataset.name = 'lem-test/not-a-dataset': the Hugging Face Hub cannot be reached" in out.stdout, out
    assert "not in the local cache" in out.stdout


def test_json_array_file(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": "One?"}, "Two?"]), encoding="utf-8")
    with pytest.raises(PromptError, match="available fields: 'prompt', 'text'"):
        load_prompts(_file(path, field="question"), tokenizer, seed=0)
    assert [p.text for p in load_prompts(_file(path, field="prompt"), tokenizer, seed=0).prompts] == ["One?"]
