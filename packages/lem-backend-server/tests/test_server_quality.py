"""``[quality]`` through ``backend = "server"``: llama-cpp-python's server on the tiny Llama's GGUF, for real.

The proof of lem.testing.quality (the model's own greedy answers as references for half the prompts, wrong
ones for the rest: accuracy exactly 0.5, ``correct`` per request as constructed, J per correct answer the
cycle's energy over its correct count with lem-energy-nvml's fake ``pynvml``), then what is scored: the text
the server streamed, even when lem's tokenizer is not the server's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lem.serving import Delta
from lem.testing.quality import PROMPTS, WRONG, prove_accuracy, run_experiment
from lem.types import LoadedModel
from lem_backend_server import client, plugin

pytest.importorskip("llama_cpp.server")

N_CTX = 512
MAX_TOKENS = 6


def _server(tiny_gguf: Path, tokenizer: Path, url: str | None = None) -> dict[str, Any]:
    if url is not None:
        return {"url": url, "engine": "llamacpp", "tokenizer": str(tokenizer)}
    return {"engine": "llamacpp", "tokenizer": str(tokenizer), "args": ["--n_ctx", str(N_CTX)]}


def test_accuracy_is_half_through_the_llamacpp_server(tiny_gguf: Path, tiny_llama: Path, tmp_path: Path) -> None:
    base = {
        "model": str(tiny_gguf),
        "backend": "server",
        "precision": "float32",
        "server": _server(tiny_gguf, tiny_llama),
    }
    summary = prove_accuracy(base, tmp_path)
    assert summary["status"] == "ok"


@pytest.fixture(scope="module")
def served(tiny_gguf: Path, tiny_llama: Path, make_config: Any) -> Iterator[LoadedModel]:
    """One managed llama.cpp server; the scored run below reaches it by URL, and the test asks it directly."""
    loaded = plugin.load_model(backend="server", config=make_config(str(tiny_gguf), _server(tiny_gguf, tiny_llama)))
    assert loaded is not None
    yield loaded
    loaded.close()


def _shuffled_tokenizer(tiny_llama: Path, dest: Path) -> Path:
    """The tiny Llama's tokenizer with its ordinary tokens' ids reversed (special tokens keep theirs): it
    reads the same text into other ids, and decodes the server's ids into other text."""
    dest.mkdir()
    for f in tiny_llama.glob("*"):
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "config.json":
            shutil.copy(f, dest / f.name)
    tok = json.loads((tiny_llama / "tokenizer.json").read_text())
    special = {t["id"] for t in tok["added_tokens"]}
    vocab: dict[str, int] = tok["model"]["vocab"]
    ordinary = sorted(i for i in vocab.values() if i not in special)
    flip = dict(zip(ordinary, reversed(ordinary), strict=True))
    tok["model"]["vocab"] = {text: flip.get(i, i) for text, i in vocab.items()}
    (dest / "tokenizer.json").write_text(json.dumps(tok))
    return dest


def _servers_text(model: LoadedModel, prompt: str) -> str:
    """The server's own answer to the request lem sends, not streamed."""
    import httpx

    eos = model.tokenizer.eos_token_id
    body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0, "logit_bias": {str(eos): -1e9}}
    r = httpx.post(model.info["url"] + "/v1/completions", json=body, timeout=60)
    r.raise_for_status()
    return str(r.json()["choices"][0]["text"])


def test_the_streamed_text_is_scored_when_lems_tokenizer_differs(
    served: LoadedModel, tiny_gguf: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    shuffled = _shuffled_tokenizer(tiny_llama, tmp_path / "shuffled-tokenizer")
    truth = [_servers_text(served, p) for p in PROMPTS[:4]]
    assert all(t.strip() for t in truth), truth
    # The tokenizer lem is given really differs: the server's answer read by the model's own tokenizer and
    # decoded by lem's is other text (what output_text would be were the ids decoded instead).
    own, other = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(shuffled)
    assert own.eos_token_id == other.eos_token_id
    assert all(other.decode(own.encode(t, add_special_tokens=False)) != t for t in truth)

    expected = [i % 2 == 0 for i in range(len(truth))]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": p, "answer": t if ok else WRONG}) + "\n"
            for p, t, ok in zip(PROMPTS, truth, expected, strict=False)
        )
    )
    doc = {
        "model": str(tiny_gguf),
        "backend": "server",
        "precision": "float32",
        "server": _server(tiny_gguf, shuffled, url=served.info["url"]),
        "dataset": {"source": "file", "path": str(prompts), "num_prompts": len(truth), "reference_field": "answer"},
        "generation": {"max_output_tokens": MAX_TOKENS, "ignore_eos": True, "do_sample": False},
        "measurement": {"cycles": 1, "warmup_requests": 0, "idle_seconds": 0, "energy_meter": "none"},
        "quality": {"scorer": "exact"},
    }
    exp_dir = run_experiment(doc, tmp_path / "run")
    rows = sorted(json.loads((exp_dir / "cycle-001.json").read_text())["requests"], key=lambda r: r["id"])
    assert [r["output_text"] for r in rows] == truth  # exactly the server's text, not trimmed, not re-decoded
    assert [r["correct"] for r in rows] == expected
    quality = json.loads((exp_dir / "cycle-001.json").read_text())["metrics"]["quality"]
    assert (quality["scored"], quality["correct"], quality["accuracy"]) == (4, 2, 0.5)
    # No meter: no energy per correct answer, and a reason for it.
    assert quality["j_per_correct_answer"] is None


def test_text_wins_over_token_ids_a_server_also_sends(tiny_llama: Path, tmp_path: Path) -> None:
    """vLLM's server streams ``token_ids`` beside ``text``: the text is the output, whatever lem's tokenizer says
    of the ids (read through the client's parser and the core's collection, as a run does)."""
    import attrs
    from transformers import AutoTokenizer

    from lem.figures.requests import collect, with_text
    from lem.types import Request, TokenEvent

    own = AutoTokenizer.from_pretrained(tiny_llama)
    other = AutoTokenizer.from_pretrained(_shuffled_tokenizer(tiny_llama, tmp_path / "shuffled-tokenizer"))
    pieces = [" the", " energy", " of"]
    ids = [own.encode(p, add_special_tokens=False) for p in pieces]
    state = client._Stream()
    deltas: list[Delta] = []
    for piece, piece_ids in zip(pieces, ids, strict=True):
        chunk = {"choices": [{"index": 0, "text": piece, "token_ids": piece_ids, "finish_reason": None}]}
        deltas += client.parse(b"data: " + json.dumps(chunk).encode(), state, 1)
    usage = {"choices": [], "usage": {"completion_tokens": sum(map(len, ids))}}
    assert client.parse(b"data: " + json.dumps(usage).encode(), state, 2) == []
    assert client.parse(b"data: [DONE]", state, 3) == [] and state.done
    deltas.append(Delta(n_tokens=0, finished=True, t_ns=3, text=state.text))
    events = [TokenEvent(0, d.t_ns or 0, d.count, d.finished, d.token_ids, text=d.text) for d in deltas]
    (trace,) = with_text(collect([Request(0, "x", 1)], events), other)
    flat = [i for piece_ids in ids for i in piece_ids]
    assert trace.token_ids == tuple(flat)
    assert trace.output_text == "".join(pieces)
    assert other.decode(flat, skip_special_tokens=True) != trace.output_text  # decoding would have been wrong
    bare = [attrs.evolve(e, text=None) for e in events]
    (decoded,) = with_text(collect([Request(0, "x", 1)], bare), own)
    assert decoded.output_text is not None  # the same events with no text at all: lem decodes the ids
    assert decoded.output_text.strip() == "".join(pieces).strip()
