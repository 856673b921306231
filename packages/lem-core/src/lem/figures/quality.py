"""Quality: each output scored against its reference, accuracy and energy per correct answer (``[quality]``).

Scorers are plugins: the ``register_scorers`` hook maps a name to a function
``(output, reference, quality) -> bool``; the built-in ones below are
registered through it by this module, a built-in plugin. A scorer raises
``ValueError`` when it cannot score a pair (a reference that holds no number):
that request's ``correct`` is null with the message as its reason.

Built-in scorers (docs/quality.md):

=========== ==================================================================================
``exact``   output equals reference after ``normalize`` (case, whitespace, end punctuation)
``contains`` the normalised reference appears in the normalised output
``number``  the last number in the output equals the reference's last number (GSM8K ``#### 72``);
            ``1,000``, ``1 000`` (thin space), ``1000``, ``1000.0`` and ``1e3`` are equal; units and ``$``
            are ignored; a comma groups only three digits (``1,2,3`` is three numbers)
``choice``  the option letter the output names (``(B)``, ``B.``, ``Answer: B``) equals the reference's
``regex``   ``pattern``'s first group (else its whole match) in the output equals the reference
=========== ==================================================================================

Figures, per cycle (``metrics.quality``): requests scored, correct answers,
accuracy (correct / scored) with a Wilson interval over the cycle's scored
requests, correct answers per second, J per correct answer (the window's total
energy / correct answers, and above idle). Over the experiment (the summary's
``quality``, over the cycles validity gating kept, as every figure is): each prompt's outcome (correct in
most of its scored requests), and accuracy with a Wilson interval over the prompts: greedy decoding repeats
the same answers every cycle, so the prompt set, not the cycles, is the uncertainty.
:func:`mcnemar` is the paired test of two experiments' per-prompt outcomes.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from lem.config import QualityConfig
from lem.figures.energy import energy_per
from lem.hookspecs import hookimpl
from lem.plugins import get_plugin_manager

#: A scorer: ``(output, reference, quality) -> correct``; ``ValueError`` when the pair cannot be scored.
Scorer = Callable[[str, str, QualityConfig], bool]

NO_QUALITY = "no [quality] table: outputs are not scored (see docs/quality.md)"
NO_SCORED = "no request of this cycle could be scored"
NO_CORRECT = "no answer of this cycle was correct"
FAILED = "the request failed"
NO_TEXT = "the backend reported no output text (nor token ids to decode)"
NO_REFERENCE = "the prompt has no reference (dataset.reference_field)"
#: z of a two-sided 95% interval.
Z95 = 1.959963984540054

# --- normalising and scoring ---------------------------------------------------------------------------

_SPACE = re.compile(r"\s+")
_EDGE_PUNCTUATION = string.punctuation + "“”‘’«»。，！？"


def normalize(text: str, quality: QualityConfig) -> str:
    """``text`` as ``quality.normalize`` asks: whitespace collapsed, end punctuation stripped, case folded."""
    if "whitespace" in quality.normalize:
        text = _SPACE.sub(" ", text).strip()
    if "punctuation" in quality.normalize:
        text = text.strip(_EDGE_PUNCTUATION + " \t\n")
    if "case" in quality.normalize:
        text = text.casefold()
    return text


def exact(output: str, reference: str, quality: QualityConfig) -> bool:
    """The output is the reference (both normalised)."""
    return normalize(output, quality) == normalize(reference, quality)


def contains(output: str, reference: str, quality: QualityConfig) -> bool:
    """The reference appears in the output (both normalised)."""
    return normalize(reference, quality) in normalize(output, quality)


#: Thousands separators inside a number: a comma, or the no-break and thin spaces of ``1 000`` (SI style).
#: A plain space is not one: ``1 000`` may as well be two numbers.
_GROUP = ",\u00a0\u2009\u202f"
_NUMBER = re.compile(
    rf"(?<![\d.])-?(?:\d{{1,3}}(?:[{_GROUP}]\d{{3}})+(?!\d)|\d+)"  # 1,000 / 1 000 (groups of three), or 1000
    r"(?:\.\d+)?"  # a decimal part
    r"(?:[eE][-+]?\d+(?![\d.]))?"  # an exponent: 3e5, 1.5E-3
)
_SEPARATORS = str.maketrans("", "", _GROUP)


def last_number(text: str) -> Decimal | None:
    """The last number in ``text`` (thousands separators dropped), or ``None`` when there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return Decimal(found[-1].translate(_SEPARATORS))
    except InvalidOperation:  # pragma: no cover - the pattern only matches digits, separators, one dot, exponent
        return None


def number(output: str, reference: str, quality: QualityConfig) -> bool:
    """The last number of the output equals the reference's last number (``1,000`` = ``1000.0``)."""
    want = last_number(reference)
    if want is None:
        raise ValueError(f"the reference {reference[:60]!r} holds no number (scorer 'number')")
    got = last_number(output)
    return got is not None and got == want


def chosen_letter(text: str, letters: str) -> str | None:
    """The option letter ``text`` names: after ``answer``, in parentheses, or standing alone; else ``None``.

    :param letters: the option letters, upper case. After ``answer`` or in parentheses either case counts
        (``(b)``); standing alone only upper case does, so the article ``a`` is not read as option A.
    """
    cls = f"[{re.escape(letters.upper())}]"
    for pattern, flags in (
        (rf"answer\s*(?:is)?\s*[:\-]?\s*\(?({cls})\b", re.IGNORECASE),
        (rf"\(({cls})\)", re.IGNORECASE),
        (rf"(?<![\w'])({cls})(?=[).:,]|\s|$)", 0),
    ):
        found = re.search(pattern, text, flags=flags)
        if found:
            return found.group(1).upper()
    return None


def choice(output: str, reference: str, quality: QualityConfig) -> bool:
    """The option letter the output names equals the reference's (``B``, ``(B)``, ``B.``)."""
    letters = quality.choices.upper()
    want = chosen_letter(reference.strip().upper(), letters)
    if want is None:
        raise ValueError(f"the reference {reference[:60]!r} names no option letter of {letters!r} (scorer 'choice')")
    return chosen_letter(output, letters) == want


def regex(output: str, reference: str, quality: QualityConfig) -> bool:
    """``quality.pattern``'s first group (else the whole match) in the output equals the reference."""
    found = re.search(quality.pattern or "", output)
    if found is None:
        return False
    got = found.group(1) if found.re.groups else found.group(0)
    return normalize(got or "", quality) == normalize(reference, quality)


BUILTIN_SCORERS: dict[str, Scorer] = {
    "exact": exact,
    "contains": contains,
    "number": number,
    "choice": choice,
    "regex": regex,
}


@hookimpl
def register_scorers() -> Mapping[str, Scorer]:
    """The built-in scorers."""
    return BUILTIN_SCORERS


def scorers() -> dict[str, Scorer]:
    """Every installed scorer by name; a name registered twice keeps its first registration (built-ins first)."""
    found: dict[str, Scorer] = dict(BUILTIN_SCORERS)
    for table in get_plugin_manager().hook.register_scorers():
        for name, fn in table.items():
            found.setdefault(name, fn)
    return found


def score(
    output: str | None, reference: str | None, error: str | None, quality: QualityConfig
) -> tuple[bool | None, str | None]:
    """``(correct, reason)`` of one request: a verdict, or ``None`` with why it could not be scored."""
    if error is not None:
        return None, f"{FAILED}: {error}"
    if reference is None:
        return None, NO_REFERENCE
    if output is None:
        return None, NO_TEXT
    scorer = scorers().get(quality.scorer)
    if scorer is None:
        return None, f"scorer {quality.scorer!r} is not installed"
    try:
        return bool(scorer(output, reference, quality)), None
    except ValueError as exc:
        return None, str(exc)


def annotate(rows: Sequence[dict[str, Any]], references: Sequence[str | None], quality: QualityConfig | None) -> None:
    """Give each request row its ``reference`` and, under ``[quality]``, ``correct`` and ``correct_reason``.

    :param references: the prompt set's references; a row's prompt is ``id % len(references)`` (every pass
        of a cycle serves the prompts in order).
    """
    for row in rows:
        row["reference"] = references[int(row["id"]) % len(references)] if references else None
        if quality is not None:
            row["correct"], row["correct_reason"] = score(
                row.get("output_text"), row["reference"], row["error"], quality
            )


# --- figures -------------------------------------------------------------------------------------------


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """The Wilson score interval of a proportion ``correct / n`` (``(None, None)`` when ``n`` is 0)."""
    if n <= 0:
        return None, None
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def cycle_quality(
    rows: Sequence[Mapping[str, Any]], duration_s: float, energy: Mapping[str, Any], quality: QualityConfig | None
) -> dict[str, Any]:
    """The quality block of one cycle from its raw request rows (rescored: ``output_text``, ``reference``)."""
    out: dict[str, Any] = {
        "scorer": None if quality is None else quality.scorer,
        "reason": None,
        "energy_reason": None,
        "requests": len(rows),
        "scored": None,
        "correct": None,
        "accuracy": None,
        "wilson95_low": None,
        "wilson95_high": None,
        "correct_answers_per_s": None,
        "j_per_correct_answer": None,
        "dynamic_j_per_correct_answer": None,
    }
    if quality is None:
        out["reason"] = NO_QUALITY
        return out
    verdicts = [score(r.get("output_text"), r.get("reference"), r.get("error"), quality)[0] for r in rows]
    scored = sum(1 for v in verdicts if v is not None)
    correct = sum(1 for v in verdicts if v is True)
    out.update(scored=scored, correct=correct)
    if scored == 0:
        out["reason"] = out["energy_reason"] = NO_SCORED
        return out
    out["accuracy"] = correct / scored
    out["wilson95_low"], out["wilson95_high"] = wilson(correct, scored)
    out["correct_answers_per_s"] = correct / duration_s if duration_s > 0 else None
    out.update(energy_per(energy, correct, "correct_answer", NO_CORRECT))
    return out


def per_prompt(cycles: Sequence[Mapping[str, Any]], prompts: int, quality: QualityConfig) -> list[bool | None]:
    """Each prompt's outcome over every cycle and pass: correct in most of its scored requests (a tie is
    not), ``None`` when none of its requests could be scored."""
    right, seen = [0] * prompts, [0] * prompts
    for c in cycles:
        for r in c["requests"]:
            verdict, _ = score(r.get("output_text"), r.get("reference"), r.get("error"), quality)
            if verdict is not None:
                i = int(r["id"]) % prompts
                seen[i] += 1
                right[i] += verdict
    return [None if n == 0 else 2 * k > n for k, n in zip(right, seen, strict=True)]


def summary_block(
    cycles: Sequence[Mapping[str, Any]],
    prompts: int | None,
    quality: QualityConfig | None,
    left_out: str | None = None,
) -> dict[str, Any]:
    """The summary's ``quality``: per-prompt outcomes and accuracy over the prompts with its Wilson interval.

    :param cycles: the raw records of the cycles the figures keep: spoilt cycles that validity gating left
        out (lem.figures.validity) are left out of the outcomes too.
    :param left_out: why no cycle was kept (the summary's line), when none was: the block's reason.
    """
    if quality is None:
        return {"scorer": None, "reason": NO_QUALITY}
    if not prompts:
        return {"scorer": quality.scorer, "reason": "the prompt count is not recorded"}
    if not cycles and left_out is not None:
        return {"scorer": quality.scorer, "reason": left_out}
    outcomes = per_prompt(cycles, prompts, quality)
    known = [o for o in outcomes if o is not None]
    correct = sum(known)
    low, high = wilson(correct, len(known))
    return {
        "scorer": quality.scorer,
        "reason": None if known else "no request could be scored",
        "prompts": prompts,
        "prompts_scored": len(known),
        "prompts_correct": correct,
        "accuracy": correct / len(known) if known else None,
        "wilson95_low": low,
        "wilson95_high": high,
        "per_prompt": outcomes,
    }


def mcnemar(a: Sequence[bool | None], b: Sequence[bool | None]) -> dict[str, Any]:
    """McNemar's exact test of two experiments' per-prompt outcomes on the same prompts (two-sided).

    ``b`` counts prompts only ``a`` got right, ``c`` those only ``b`` got right; prompts either could not
    score are left out. ``p_value`` is the exact binomial probability of a split at least this uneven.
    """
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    only_a = sum(1 for x, y in pairs if x and not y)
    only_b = sum(1 for x, y in pairs if y and not x)
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    p = 1.0 if n == 0 else min(1.0, 2 * tail / 2**n)
    return {"pairs": len(pairs), "only_first": only_a, "only_second": only_b, "p_value": p}


def compare_section(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``lem results compare``'s paired test: McNemar of each experiment against the first, on the same prompts.

    ``None`` when no experiment was scored; a pair on different prompt sets gets a reason instead of a test.
    """
    blocks = [s.get("quality") or {} for s in summaries]
    if not any(b.get("per_prompt") for b in blocks):
        return None
    base, base_digest = blocks[0], (summaries[0].get("prompts") or {}).get("digest")
    tests = []
    for s, b in zip(summaries[1:], blocks[1:], strict=True):
        row: dict[str, Any] = {"key": s.get("key"), "test": None, "reason": None}
        digest = (s.get("prompts") or {}).get("digest")
        if not base.get("per_prompt") or not b.get("per_prompt"):
            row["reason"] = "not scored ([quality])"
        elif digest is None or digest != base_digest or len(b["per_prompt"]) != len(base["per_prompt"]):
            row["reason"] = "different prompts: a paired test needs the same prompt set"
        else:
            row["test"] = mcnemar(base["per_prompt"], b["per_prompt"])
        tests.append(row)
    return {"test": "McNemar (exact, two-sided) on per-prompt outcomes, against the first", "pairs": tests}


def render_lines(section: Mapping[str, Any] | None) -> list[str]:
    """The paired test as caption lines of ``lem results compare`` (none when nothing was scored)."""
    if not section:
        return []
    lines = [str(section["test"]) + ":"]
    for row in section["pairs"]:
        t = row["test"]
        if t is None:
            lines.append(f"  {row['key']}: no paired test ({row['reason']})")
        else:
            verdict = "differs" if t["p_value"] < 0.05 else "no significant difference"
            lines.append(
                f"  {row['key']}: {t['only_first']} prompts right only in the first, {t['only_second']} only here, "
                f"of {t['pairs']}; p = {t['p_value']:.3g} ({verdict} at 5%)"
            )
    return lines
