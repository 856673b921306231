"""The shapes of lem's result files: one table of fields per file kind, and the check every reader shares.

A reader that takes a raw file (``setup.json``, ``cycle-NNN.json``, ``summary.json``) asks
:func:`setup_damage`, :func:`cycle_damage` or :func:`summary_damage` first: ``None`` when the file has the
shape lem writes, else one sentence naming the first field that is not, and what was expected
(``'requests' is text, expected a list``). The readers put the file's path in front and skip or refuse it
(docs/results.md, "Damaged files"); :mod:`lem.results.files` reads through them.

Each file kind is a :data:`Table`: field name -> (its check, whether it may be absent or null). A check is
a test with the words for what it expects, a nested table, or a function of the value and its dotted name.
Only the fields the figures and the readers use are described; others pass unread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from lem.results.timelines import CYCLE_NUMBERS


def number(value: Any) -> bool:
    """A JSON number (``true`` and ``false`` are not numbers, though Python's bool is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def kind_of(value: Any) -> str:
    """What ``value`` is, in words a damaged-file line uses (``text``, ``a number``, ``a list``, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "a table" if isinstance(value, Mapping) else type(value).__name__


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def whole(value: Any) -> bool:
    """A whole number (0, 1, 2, ...) as JSON holds one: an integer, not ``true``."""
    return _int(value) and value >= 0


def _finite_number(value: Any) -> bool:
    return number(value) and math.isfinite(value)


#: The types of a cycle file's fields (as :func:`lem.run.cycles.measure_cycle` writes them): a check and what
#: it expects. ``optional`` fields may be absent or null; the others must be there.
_TEXT = (lambda v: isinstance(v, str), "text")
_TEXT_OR_NULL = (lambda v: v is None or isinstance(v, str), "text or null")
_TABLE = (lambda v: isinstance(v, Mapping), "a table")
_LIST = (lambda v: isinstance(v, list), "a list")
_WHOLE = (whole, "a whole number")
_NUMBER = (_finite_number, "a number")
_NUMBER_OR_NULL = (lambda v: v is None or _finite_number(v), "a number or null")
_BOOL = (lambda v: isinstance(v, bool), "true or false")
_TEXTS = (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of text")
_WHOLES = (lambda v: isinstance(v, list) and all(whole(x) for x in v), "a list of whole numbers")
_EVENTS = (
    lambda v: (
        isinstance(v, list) and all(isinstance(e, list) and len(e) == 2 and _int(e[0]) and whole(e[1]) for e in v)
    ),
    "a list of [time, tokens] pairs of whole numbers",
)
Check = tuple[Callable[[Any], bool], str]
#: A field's check: a :data:`Check`, a nested table of fields, or a function of the value and its dotted name
#: that gives what is wrong (``None``: nothing).
Spec = Check | Mapping[str, "tuple[Spec, bool | Literal['absent']]"] | Callable[[Any, str], "str | None"]
#: The fields of a table: name -> (its check, whether it may be absent or null: ``True``; ``False``: it must be
#: there; :data:`ABSENT`: it may be absent, as in older files, but lem never writes it as null).
Table = Mapping[str, tuple[Spec, "bool | Literal['absent']"]]
ABSENT: Literal["absent"] = "absent"
_REQUEST: Table = {
    "id": (_WHOLE, False),
    "input_tokens": (_WHOLE, False),
    "origin_ns": (_NUMBER, False),
    "events": (_EVENTS, False),
    "finished": (_BOOL, False),
    "token_ids": (_WHOLES, True),
    "error": (_TEXT, True),
    "output_text": (_TEXT, True),
    "output_digest": (_TEXT, True),
}
_WINDOW: Table = {"duration_s": (_NUMBER, False), "timeline_offset_s": (_NUMBER, True)}
_DEVICE: Table = {"energy_j": (_NUMBER_OR_NULL, False), "method": (_TEXT_OR_NULL, True)}
_ENERGY_WINDOW: Table = {
    "duration_s": (_NUMBER, False),
    "devices": (_LIST, False),
    "warnings": (_TEXTS, True),
}
_CYCLE: Table = {
    "cycle": ((lambda v: _int(v) and v in CYCLE_NUMBERS, "a cycle number (0 to 999999)"), False),
    "experiment_id": (_TEXT, True),
    "requests": (_LIST, False),
    "window": (_TABLE, False),
    "passes": ((lambda v: whole(v) and v >= 1, "a whole number from 1"), ABSENT),
    "energy_window": (_TABLE, True),
    "energy_reason": (_TEXT, True),
    "prefill": (_TABLE, True),
    "notes": (_TEXTS, ABSENT),
    "host": (_TABLE, True),
    "metrics": (_TABLE, True),
    "energy": (_TABLE, True),
    "warnings": (_TEXTS, ABSENT),
}


def _fields(doc: Any, checks: Table, where: str) -> str | None:
    """The first field of ``doc`` (a table, at ``where``) that is not what ``checks`` expect, as a sentence.

    A field's check is a :data:`Check` (a test and what it expects), a nested :data:`Table` (the field is a
    table with those fields) or a function of the value and its dotted name (a list of tables, say).
    """
    if not isinstance(doc, Mapping):
        return f"'{where}' is {kind_of(doc)}, expected a table"
    for key, (check, optional) in checks.items():
        name = f"{where}.{key}" if where else key
        if key not in doc:
            if not optional:
                return f"'{name}' is missing, expected {_expected(check)}"
            continue
        value = doc[key]
        if optional is True and value is None:
            continue
        if isinstance(check, tuple):
            ok, expected = check
            if not ok(value):
                return f"'{name}' is {kind_of(value)}, expected {expected}"
        else:
            problem = _fields(value, check, name) if isinstance(check, Mapping) else check(value, name)
            if problem is not None:
                return problem
    return None


def _expected(check: Spec) -> str:
    return check[1] if isinstance(check, tuple) else "a table" if isinstance(check, Mapping) else "a value"


def _each(spec: Table) -> Callable[[Any, str], str | None]:
    """A check of a list whose every element is a table with the fields of ``spec``."""

    def check(value: Any, where: str) -> str | None:
        if not isinstance(value, list):
            return f"'{where}' is {kind_of(value)}, expected a list"
        for i, row in enumerate(value):
            problem = _fields(row, spec, f"{where}[{i}]")
            if problem is not None:
                return problem
        return None

    return check


def _every(spec: Spec) -> Callable[[Any, str], str | None]:
    """A check of a table whose every value (a figure, a cycle's reasons, ...) passes ``spec``."""

    def check(value: Any, where: str) -> str | None:
        if not isinstance(value, Mapping):
            return f"'{where}' is {kind_of(value)}, expected a table"
        for key, item in value.items():
            problem = _fields({key: item}, {key: (spec, False)}, where)
            if problem is not None:
                return problem
        return None

    return check


_requests = _each(_REQUEST)
_devices = _each(_DEVICE)


def _energy_window(window: Any, where: str) -> str | None:
    return _fields(window, _ENERGY_WINDOW, where) or _devices(window["devices"], f"{where}.devices")


def cycle_damage(raw: Mapping[str, Any]) -> str | None:
    """What makes a cycle file unusable (the first thing found), or ``None`` when it has lem's shape.

    Every field the readers rely on is checked by its type: ``cycle``, the ``requests`` (each one's ``id``,
    token counts, ``events``, ...), the ``window``, the ``energy_window`` and its devices, the ``prefill``
    pass, and the blocks lem stored from the run (``metrics``, ``energy``, ``warnings``, ``notes``,
    ``host``). The sentence names the field and what was expected: ``'requests' is text, expected a list``.
    """
    problem = _fields(raw, _CYCLE, "")
    if problem is None:
        problem = _requests(raw["requests"], "requests") or _fields(raw["window"], _WINDOW, "window")
    if problem is None and raw.get("energy_window") is not None:
        problem = _energy_window(raw["energy_window"], "energy_window")
    prefill = raw.get("prefill") if problem is None else None
    if prefill is not None:
        problem = _fields(prefill, {"requests": (_LIST, False), "window": (_TABLE, False)}, "prefill")
        problem = problem or _requests(prefill["requests"], "prefill.requests")
        problem = problem or _fields(prefill["window"], _WINDOW, "prefill.window")
        if problem is None and prefill.get("energy_window") is not None:
            problem = _energy_window(prefill["energy_window"], "prefill.energy_window")
    return problem


#: The model config's numbers the FLOP and roofline figures use (lem.figures.flops.shapes, weight_widths).
_SHAPES: Table = {
    key: (_WHOLE, True)
    for key in (
        *("hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer", "num_layers", "num_attention_heads"),
        *("n_head", "vocab_size", "num_key_value_heads", "num_kv_heads", "head_dim", "intermediate_size", "n_inner"),
        *("ffn_dim", "num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok", "moe_top_k"),
        "moe_intermediate_size",
    )
} | {"model_type": (_TEXT, True)}  # looked up in a set (lem.figures.flops): a list or table there is no type
#: What a backend said of the model that the roofline figures use (lem.figures.hardware).
_BACKEND_INFO: Table = {
    "hardware": (
        {
            "device_name": (_TEXT, True),
            "device_reason": (_TEXT, True),
            "copy_bandwidth": ({"gbs": (_NUMBER, True), "method": (_TEXT, True), "reason": (_TEXT, True)}, True),
        },
        True,
    ),
    "kv_cache_types": (_TABLE, True),
    "tensor_elements": (_every(_WHOLE), True),
    "token_embd": ({"type": (_TEXT, False), "elements": (_WHOLE, False), "tied": (_BOOL, True)}, True),
}
_QUANTIZATION: Table = {key: (_WHOLE, True) for key in ("bits", "w_bit", "group_size", "q_group_size")}
_PROMPTS: Table = {
    "description": (_TEXT, True),
    "stats": (_TABLE, True),
    "warnings": (_TEXTS, True),
    "count": (_WHOLE, True),
    "digest": (_TEXT, True),
    "digest_of": (_TEXT, True),
}
_PHASE: Table = {"duration_s": (_NUMBER, True), "energy_window": (_energy_window, True), "energy_reason": (_TEXT, True)}
#: The fields of ``setup.json`` (as :func:`lem.run.runner.write_setup` writes them) that the figures and the
#: readers use; schema 1 files lack some, so all may be absent.
_SETUP: Table = {
    "experiment_id": (_TEXT, True),
    "run_id": (_TEXT, True),
    "backend": (_TEXT, True),
    "model": (_TEXT, True),
    "sweep_values": (_TABLE, ABSENT),
    "config": (_TABLE, True),
    "meter": (_TEXT, True),
    "meter_reason": (_TEXT, True),
    "metered_devices": (_LIST, True),
    "model_info": (
        {
            "num_parameters": (_WHOLE, True),
            "devices": (_LIST, True),
            "model_config": (
                {**_SHAPES, "text_config": (_SHAPES, True), "quantization_config": (_QUANTIZATION, True)},
                True,
            ),
            "info": (_BACKEND_INFO, True),
        },
        ABSENT,
    ),
    "prompts": (_PROMPTS, True),
    "load": (
        {
            "duration_s": (_NUMBER, True),
            "energy_window": (_energy_window, True),
            "energy_reason": (_TEXT, True),
            "metered_devices": (_LIST, True),
            "phases": (_every(_PHASE), True),
        },
        True,
    ),
    "idle": (
        {
            "seconds": (_NUMBER, True),
            "window": (_energy_window, True),
            "reason": (_TEXT, True),
            "power_spread": ({"rel_spread": (_NUMBER, True)}, True),
        },
        ABSENT,
    ),
    "warmup": (_TABLE, True),
    "warnings": (_TEXTS, ABSENT),
}


def setup_damage(setup: Mapping[str, Any]) -> str | None:
    """What makes a ``setup.json`` unusable (the first thing found), or ``None`` when it has lem's shape.

    Every field the figures and the readers use is checked by its type (the identity, the stored ``config``,
    ``model_info`` and the model config's shapes, ``prompts``, ``load``, the ``idle`` baseline's window,
    ``warnings``), as :func:`cycle_damage` checks a cycle file: ``'idle.window' is text, expected a table``.
    """
    return _fields(setup, _SETUP, "")


def _figures(value: Any, where: str) -> str | None:
    if isinstance(value, Mapping) and not value:
        return f"'{where}' is an empty table, expected a table of figures"
    return _every(_FIGURE)(value, where)


_NUMBERS_OR_NULL = (
    lambda v: isinstance(v, list) and all(x is None or _finite_number(x) for x in v),
    "a list of numbers or nulls",
)
#: A figure of a summary (lem.figures.stats): its statistics over cycles.
_FIGURE: Table = {
    "n": (_WHOLE, True),
    "missing": (_WHOLE, True),
    "values": (_NUMBERS_OR_NULL, True),
    "mean": (_NUMBER, True),
    "std": (_NUMBER, True),
    "ci95_low": (_NUMBER, True),
    "ci95_high": (_NUMBER, True),
    "rel_ci95": (_NUMBER, True),
    "ci95_low_impossible": (_BOOL, True),
    "reason": (_TEXT, True),
}
_SLO_TARGETS: Table = {key: (_NUMBER, True) for key in ("ttft_ms", "tpot_ms", "e2e_ms", "percentile")}
_SLO_CHECK: Table = {
    "target_ms": (_NUMBER, True),
    "percentile": (_NUMBER, True),
    "within": (_WHOLE, True),
    "share_within": (_NUMBER, True),
    "observed_ms": (_NUMBER, True),
    "observed_reason": (_TEXT, True),
    "met": (_BOOL, True),
}
#: The fields of ``summary.json`` (as :func:`lem.figures.summary.summarize` writes them) that the readers use.
#: Only ``figures`` must be there (schema 1 summaries lack many of the others).
_SUMMARY: Table = {
    "key": (_TEXT, True),
    "experiment_id": (_TEXT, True),
    "run_id": (_TEXT, True),
    "backend": (_TEXT, True),
    "model": (_TEXT, True),
    "sweep_values": (_TABLE, True),
    "config": (_TABLE, True),
    "status": (_TEXT, True),
    "status_reason": (_TEXT, True),
    "cycles": (_WHOLE, True),
    "cycles_included": (_WHOLE, True),
    "figures": (_figures, False),
    "latency_pooled": (_every(_TABLE), True),
    "slo": (
        {
            "slo": (_SLO_TARGETS, True),
            "reason": (_TEXT, True),
            "cycles": (_WHOLE, True),
            "cycles_met": (_WHOLE, True),
            "pooled_good_requests": (_WHOLE, True),
            "pooled_requests": (_WHOLE, True),
            "pooled_share": (_NUMBER, True),
            "pooled_checks": (_every(_SLO_CHECK), True),
            "pooled_met": (_BOOL, True),
        },
        True,
    ),
    "quality": (_TABLE, True),
    "failed_requests": (_WHOLE, True),
    "failure_reasons": (_TABLE, True),
    "workload": (
        {key: (_WHOLES, True) for key in ("requests", "input_tokens", "output_tokens", "failed_requests", "passes")},
        True,
    ),
    "precision": (_TABLE, True),
    "validity": (
        {
            "mode": (_TEXT, True),
            "spoilt_cycles": (_WHOLES, True),
            "excluded_cycles": (_WHOLES, True),
            "replaced_cycles": (_WHOLES, True),
            "included": (_WHOLE, True),
            "reasons": (_every(_TEXTS), True),
        },
        True,
    ),
    "cross_check": (_TABLE, True),
    "uncertainty": (_TABLE, True),
    "host_load": (_LIST, True),
    "per_request_energy": (_TABLE, True),
    "thermal": (_TABLE, True),
    "output_digest": (_TEXT, True),
    "outputs_identical_across_cycles": (_BOOL, True),
    "output_digest_reason": (_TEXT, True),
    "flags": (_TABLE, True),
    "methods": (_TABLE, True),
    "hardware": (_TABLE, True),
    "energy_reason": (_TEXT, True),
    "idle_reason": (_TEXT, True),
    "prompts": (_PROMPTS, True),
    "load": (_TABLE, True),
    "idle_power_w": (_NUMBER, True),
    "warmup": (_TABLE, True),
    "warnings": (_TEXTS, True),
}


def summary_damage(doc: Mapping[str, Any]) -> str | None:
    """What makes a ``summary.json`` unusable (the first thing found), or ``None`` when it has lem's shape.

    The one check of a summary's shape that every reader shares (``lem results list``, ``show``, ``compare``,
    ``export``, the plots and the report): a summary one of them calls damaged, every one of them does. Every
    field the readers use is checked by its type, as :func:`cycle_damage` checks a cycle file: a non-empty
    ``figures`` table of figures (``n``, ``mean``, ``std``, ``ci95_low``, ``ci95_high``: numbers or null;
    ``values``: a list of them), whole counts (``cycles``, ``failed_requests``), the ``workload``, ``slo``,
    ``validity`` and other tables. The sentence names the field and what was expected.
    """
    if "figures" not in doc:
        return "'figures' is missing, expected a table of figures"
    return _fields(doc, _SUMMARY, "")
