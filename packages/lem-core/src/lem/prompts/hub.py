"""Prompts from a Hugging Face dataset (``dataset.source = "huggingface"``), through the ``datasets`` library.

``dataset.name`` is one of:

- a Hub id (``"tatsu-lab/alpaca"``): ``datasets.load_dataset(name, subset, split=split)``.
  Once downloaded it loads from the local cache, also offline (``HF_HUB_OFFLINE=1`` or
  ``HF_DATASETS_OFFLINE=1`` skip the network; without them, ``datasets`` falls back to the
  cache when the Hub cannot be reached, after a network timeout);
- a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``:
  ``datasets.load_from_disk(name)``, then ``split`` for a ``DatasetDict``;
- any other local directory of data files (parquet, jsonl, csv...): ``load_dataset`` reads it
  with its packaged builders.

The whole text column is read (Arrow makes that cheap for datasets of up to a few
million rows); sampling then works as for files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lem.config import DatasetConfig
from lem.errors import PromptError
from lem.prompts.promptset import PromptSet
from lem.prompts.text import build, pick_field

_INSTALL = "pip install 'lem-core[datasets]'"


def _is_saved(path: Path) -> bool:
    """A directory written by ``save_to_disk`` (a Dataset has state.json, a DatasetDict dataset_dict.json)."""
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def _open(dataset: DatasetConfig, where: str) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise PromptError(f"{where}: Hugging Face datasets need the 'datasets' package ({_INSTALL})") from exc
    name = dataset.name or ""
    path = Path(name).expanduser()
    try:
        if _is_saved(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if dataset.split not in loaded:
                    raise PromptError(
                        f"dataset.split = {dataset.split!r}: no such split in {where} "
                        f"(available splits: {', '.join(repr(s) for s in loaded)})"
                    )
                return loaded[dataset.split]
            return loaded
        return datasets.load_dataset(name, dataset.subset, split=dataset.split)
    except PromptError:
        raise
    except ConnectionError as exc:
        raise PromptError(
            f"{where}: the Hugging Face Hub cannot be reached and the dataset is not in the local cache "
            f"({exc}); download it once while online, or point dataset.name at a local copy"
        ) from exc
    except datasets.exceptions.DatasetNotFoundError as exc:
        raise PromptError(
            f"{where}: no such dataset on the Hugging Face Hub, or it is private or gated ({exc}); "
            "check the name, or log in with `hf auth login`"
        ) from exc
    except IndexError as exc:
        # datasets 5.x cannot load_from_disk a dataset saved with zero rows (zero shards).
        raise PromptError(f"{where}: the dataset is empty or damaged ({exc!r}); choose another dataset") from exc
    except FileNotFoundError as exc:
        raise PromptError(f"{where}: not found ({exc}); check the name or path") from exc
    except (ValueError, datasets.exceptions.DatasetsError) as exc:
        # Bad split or missing config name: datasets' own message lists the available ones.
        raise PromptError(
            f"{where} (subset {dataset.subset!r}, split {dataset.split!r}): {exc}; "
            "check dataset.subset and dataset.split"
        ) from exc


def load_hub(dataset: DatasetConfig, tokenizer: Any | None, *, seed: int) -> PromptSet:
    """Prompts from ``dataset.name`` (a Hub id or a local dataset directory); see the module docstring."""
    if not dataset.name:
        raise PromptError(
            "dataset.name is required when dataset.source = 'huggingface' (e.g. name = \"tatsu-lab/alpaca\")"
        )
    where = f"dataset.name = {dataset.name!r}"
    ds = _open(dataset, where)
    names = list(ds.column_names)
    if len(ds) == 0:
        raise PromptError(f"{where}, split {dataset.split!r}: the dataset is empty (choose another split or dataset)")
    field, input_field = pick_field(names, dataset, where)
    wanted = [field] if input_field is None else [field, input_field]
    if (
        dataset.reference_field is not None and dataset.reference_field in names
    ):  # a missing one is reported by the text pipeline
        wanted.append(dataset.reference_field)
    columns = ds.select_columns(wanted).to_dict()
    origin = f"huggingface {dataset.name!r} ({dataset.subset + ', ' if dataset.subset else ''}split {dataset.split!r})"
    return build(columns, names, dataset, tokenizer, seed=seed, origin=origin)
