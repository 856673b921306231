"""lem's TensorRT-LLM surface cross-checked against what NVIDIA's versioned 1.2.x documentation shows.

``tests/data/trtllm_1_2_docs_check.json`` records, for every class, field, call
and attribute lem relies on, what the TensorRT-LLM documentation pages of a 1.2.x
release (``nvidia.github.io/TensorRT-LLM/<version>/...``) showed: ``found: true``
with the page and what it showed, ``found: null`` ("not seen": nothing claimed),
or ``found: false`` (a 1.2.x page shows it is not there). It was written by hand
from documentation excerpts; nothing here reaches the network or imports
TensorRT-LLM. The tests check the record covers what lem passes (derived from the
option tables and from lem's own imports, as ``test_trt_surface.py`` does), that
nothing lem relies on is missing from 1.2.x, and that what the pages show agrees
with ``trtllm_api.json``.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lem_trt_surface as surface_check

from lem_backend_tensorrt import options, sampling

HERE = Path(__file__).resolve().parent
CHECK_PATH = HERE / "data" / "trtllm_1_2_docs_check.json"
SRC = Path(options.__file__).resolve().parent
SURFACE = surface_check.load()
#: A documentation page counts only if its URL names a 1.2.x release.
VERSIONED = re.compile(r"^https://nvidia\.github\.io/TensorRT-LLM/(1\.2\.\d+[0-9a-z.]*)/")

#: What lem reads or calls at run time beyond the option tables (stream.py, engine.py, plugin.py).
RUNTIME_ITEMS = (
    "LLM.__init__",
    "LLM.generate_async",
    "LLM.generate_async.streaming",
    "LLM.generate",
    "LLM.generate.use_tqdm",
    "LLM.shutdown",
    "LLM.tokenizer",  # plugin._tokenizer
    "TrtLLM.__init__",
    "TrtLLM.save",
    "TrtLLM.shutdown",
    "RequestOutput.outputs",
    "RequestOutput.finished",
    "RequestOutput.abort",
    "CompletionOutput.token_ids",
    "CompletionOutput.token_ids_diff",
    "BaseLlmArgs.max_input_len",  # its default is options.TRTLLM_DEFAULT_MAX_INPUT_LEN
    "TrtLlmArgs.enable_build_cache",  # left at its default (off): lem caches engines itself
)
#: Records of a whole class rather than one of its members.
CLASS_ITEMS = ("class CompletionOutput",)


def _imports() -> set[str]:
    """``import tensorrt_llm.X.Y`` for every name lem imports from TensorRT-LLM (read from its source with ast)."""
    found: set[str] = set()
    for path in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tensorrt_llm"):
                found.update(f"import {node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import) and any(a.name == "tensorrt_llm" for a in node.names):
                found.add("tensorrt_llm.__version__")  # what lem reads from the bare module
    if "import tensorrt_llm.llmapi" in found:
        # engine._build: getattr(llmapi, cls) for the nested configs, and llmapi.QuantAlgo.
        found.update(f"import tensorrt_llm.llmapi.{cls}" for cls in (*options.NESTED, *options.ENGINE_NESTED))
        found.add("import tensorrt_llm.llmapi.QuantAlgo")
    return found


def lem_items() -> set[str]:
    """Every TensorRT-LLM name lem passes, reads or imports, as ``Class.field`` (the record's keys)."""
    items = {f"{cls}.{field}" for cls, field in options.TENSORRT_OPTIONS.values()}
    items |= {f"TorchLlmArgs.{field}" for field in (*options.CORE_OPTIONS.values(), *options.NESTED.values())}
    items.add("DraftTargetDecodingConfig.decoding_type")  # options.llm_args sets it
    items |= {f"SamplingParams.{field}" for field in sampling.SAMPLING_OPTIONS.values()}
    items.add("SamplingParams.use_beam_search")  # sampling.sampling_kwargs sets it for beams
    # The engine flow: its own targets, the shared keys on TrtLlmArgs, quantization.
    items |= {f"{cls}.{field}" for cls, field in options.ENGINE_OPTIONS.values()}
    items |= {f"BuildConfig.{field}" for field in options.ENGINE_CORE_OPTIONS.values()}
    for key, (cls, field) in options.TENSORRT_OPTIONS.items():
        if key not in options.ENGINE_OPTIONS and key not in options.PYTORCH_ONLY:
            items.add(f"TrtLlmArgs.{field if cls == 'TorchLlmArgs' else options.NESTED[cls]}")
    items |= {f"{cls}.{field}" for cls, field in options.ENGINE_QUANTIZATION.values()}
    items.add("CalibConfig.calib_batch_size")  # options.quantization_args sets it
    items |= {
        f"TrtLlmArgs.{field}" for field in (*options.ENGINE_NESTED.values(), "build_config", "tokenizer", "model")
    }
    items |= {f"QuantAlgo.{algo}" for algo in options.QUANTIZATION.values() if algo is not None}
    return items | set(RUNTIME_ITEMS) | _imports()


def load_check(path: Path = CHECK_PATH) -> dict[str, Any]:
    """The recorded cross-check as a dict."""
    return dict(json.loads(path.read_text(encoding="utf-8")))


CHECK = load_check()


def _normalise(text: str) -> str:
    """An annotation or default as sphinx or the source writes it, compared loosely (``~typing.``, spaces dropped)."""
    text = text.replace("~", "").replace("typing.", "").replace("pathlib.", "").replace('"', "'")
    return re.sub(r"\s+", "", text)


def disagreements(check: Mapping[str, Any], surface: Mapping[str, Any]) -> list[str]:
    """Items whose annotation or default on a 1.2.x page differs from the surface's (known differences excepted)."""
    problems = []
    for item, entry in check["items"].items():
        if entry.get("found") is not True or "known_difference" in entry:
            continue
        cls, _, field = item.partition(".")
        if cls not in surface["classes"] and surface_check.resolve(surface, cls) not in surface["classes"]:
            continue
        ours = surface_check.fields(surface, cls).get(field)
        if ours is None:
            continue
        for key in ("annotation", "default"):
            shown = entry.get(key)
            if shown is not None and ours[key] is not None and _normalise(shown) != _normalise(ours[key]):
                problems.append(f"{item}: the {check['version']} docs show {key} {shown!r}, the surface {ours[key]!r}")
    return problems


def _stand_in(value: Any) -> Any:
    """``"<SamplingParams>"`` in a recorded call -> an object the surface checker takes as that class."""
    if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
        return type("StandIn", (), {"surface_class": value[1:-1]})()
    return value


def test_every_item_lem_relies_on_has_an_entry() -> None:
    missing = sorted(lem_items() - set(CHECK["items"]))
    assert missing == [], f"add these to {CHECK_PATH.name}: {missing}"
    # ... and the record holds nothing lem does not use (a stale entry after a mapping change).
    assert sorted(set(CHECK["items"]) - lem_items() - set(CLASS_ITEMS)) == []


def test_the_record_names_a_1_2_release_and_only_1_2_pages() -> None:
    assert VERSIONED.match(f"https://nvidia.github.io/TensorRT-LLM/{CHECK['version']}/")
    pages = {page["url"]: page for page in CHECK["pages"]}
    for url, page in pages.items():
        match = VERSIONED.match(url)
        assert match is not None and match.group(1) == page["version"], url
        assert page["version"] in CHECK["versions_read"] and page["seen"]
    assert CHECK["version"] == max(CHECK["versions_read"], key=_release_order)
    for item, entry in CHECK["items"].items():
        assert entry["found"] in (True, False, None), item
        if entry["found"] is None:
            assert entry["status"] == "not seen" and entry["searched"], item
        else:
            assert entry["url"] in pages and entry["seen"], item


def _release_order(version: str) -> tuple[int, ...]:
    """1.2.0rc2.post2 < 1.2.0rc6 < 1.2.0 < 1.2.1 (a final release after its candidates)."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:rc(\d+))?(?:\.post(\d+))?", version)
    assert match is not None, version
    major, minor, patch, rc, post = match.groups()
    return (int(major), int(minor), int(patch), int(rc) if rc else 10**6, int(post or 0))


def test_nothing_lem_relies_on_is_missing_from_1_2() -> None:
    # found: false is a real finding: fix the mapping, or record the difference and why (known_difference).
    absent = {item: e for item, e in CHECK["items"].items() if e["found"] is False}
    assert all(e.get("known_difference") for e in absent.values()), sorted(absent)
    assert absent == {}, sorted(absent)


def test_what_the_1_2_pages_show_agrees_with_the_surface() -> None:
    assert disagreements(CHECK, SURFACE) == []
    # Every call and keyword set a 1.2.x page shows binds to the surface's signature with fitting types.
    replayed = 0
    for item, entry in CHECK["items"].items():
        if "kwargs" in entry:
            cls = item.partition(".")[0]
            assert surface_check.check_kwargs(SURFACE, cls, entry["kwargs"]) == [], item
            replayed += 1
        if "call" in entry:
            method = ".".join(item.split(".")[:2])
            args = [_stand_in(a) for a in entry["call"]["args"]]
            assert surface_check.check_call(SURFACE, method, args, entry["call"]["kwargs"]) == [], item
            replayed += 1
    assert replayed >= 5


def test_a_differing_annotation_or_default_is_reported_by_name() -> None:
    check = copy.deepcopy(CHECK)
    check["items"]["KvCacheConfig.free_gpu_memory_fraction"] = {
        "found": True,
        "url": CHECK["pages"][0]["url"],
        "seen": "made up for this test",
        "annotation": "~typing.Optional[float]",  # sphinx's spelling of the surface's: no difference
        "default": "0.5",
    }
    assert disagreements(check, SURFACE) == [
        f"KvCacheConfig.free_gpu_memory_fraction: the {CHECK['version']} docs show default '0.5', the surface '0.9'"
    ]
    check["items"]["KvCacheConfig.free_gpu_memory_fraction"]["known_difference"] = "explained here"
    assert disagreements(check, SURFACE) == []


def test_the_docs_state_the_counts() -> None:
    found = sum(e["found"] is True for e in CHECK["items"].values())
    unseen = sum(e["found"] is None for e in CHECK["items"].values())
    phrase = f"{found} found, {unseen} not seen"
    readme = (HERE.parent / "README.md").read_text(encoding="utf-8")
    assert phrase in readme and CHECK["version"] in readme
    docs = HERE.parents[2] / "docs" / "tensorrt.md"
    if docs.exists():  # a source checkout (not an unpacked sdist)
        assert phrase in docs.read_text(encoding="utf-8")
