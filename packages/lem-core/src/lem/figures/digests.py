"""Digests that tell whether two results served the same prompts and produced the same outputs.

Definitions (also in docs/results.md). ``sha256(x)`` is the lowercase hex
SHA-256 of the UTF-8 bytes of ``x``; ``json(x)`` is compact JSON
(``separators=(",", ":")``, ``ensure_ascii=False``):

- a request's ``output_digest``: ``sha256(json(ids))`` of its generated token
  ids, e.g. ``sha256("[5,17,3]")``; ``None`` when the backend did not report them;
- the prompt set's ``digest``: ``sha256(json([ids_1, ids_2, ...]))`` over the
  prompts' token ids in the order they are served, or, when any prompt has no
  ids, ``sha256(json([text_1, text_2, ...]))`` over their texts;
- a cycle's (and the summary's) ``output_digest``:
  ``sha256(json([ids of request 0, ids of request 1, ...]))`` over every
  request of the cycle in id order; ``None`` when any request's ids are unknown.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def sha256_json(value: Any) -> str:
    """``sha256(json(value))`` as defined above."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def ids_digest(ids: Sequence[int] | None) -> str | None:
    """The ``output_digest`` of one request's generated ids, ``None`` when they are unknown."""
    return None if ids is None else sha256_json([int(i) for i in ids])


def prompt_digest(prompts: Iterable[Any]) -> tuple[str, str]:
    """``(digest, what it covers)`` of a prompt set: over ``"token_ids"`` when every prompt has them, else ``"text"``.

    :param prompts: objects with ``token_ids`` (a sequence of ints or ``None``) and ``text``.
    """
    items = list(prompts)
    if all(p.token_ids is not None for p in items):
        return sha256_json([[int(i) for i in p.token_ids] for p in items]), "token_ids"
    return sha256_json([str(p.text) for p in items]), "text"


def cycle_output_digest(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The ``output_digest`` of a cycle's request rows (JSON form), ``None`` when any request's ids are unknown."""
    ordered = sorted(rows, key=lambda r: int(r["id"]))
    ids = [r.get("token_ids") for r in ordered]
    if not ids or any(i is None for i in ids):
        return None
    return sha256_json(ids)
