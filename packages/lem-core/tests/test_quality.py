"""The scorers (table-driven, awkward cases), the Wilson interval, McNemar's test and the config's one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lem.config import QualityConfig
from lem.configfile.loading import loads
from lem.figures import quality
from lem.plugins import get_plugin_manager
from lem.prompts import load_prompts

Q = QualityConfig()

CASES = [
    # scorer, output, reference, correct
    ("exact", "Paris.", "paris", True),
    ("exact", "  Paris  \n", "Paris", True),
    ("exact", "Paris, France", "Paris", False),
    ("exact", "New   York!", "new york", True),
    ("contains", "The capital is Paris.", "paris", True),
    ("contains", "The capital is Lyon.", "Paris", False),
    ("number", "She pays $1,000 in total.", "1000", True),
    ("number", "The answer is 1000.0", "#### 1,000", True),
    ("number", "3 apples and 5 pears make 8 fruits", "8", True),
    ("number", "8 fruits, then 3 eaten", "8", False),
    ("number", "It takes 18 dollars.", "18", True),
    ("number", "-4 degrees", "-4", True),
    ("number", "no digits here", "7", False),
    ("number", "version 2.5.", "2.5", True),
    ("choice", "The answer is (B).", "B", True),
    ("choice", "(c) is right", "C", True),
    ("choice", "B) because of energy", "(B)", True),
    ("choice", "Answer: D", "D", True),
    ("choice", "A and then some", "B", False),
    ("choice", "I think it is A.", "B", False),
    ("choice", "nothing chosen", "A", False),
    ("choice", "It is a trick question; B.", "B", True),  # the article "a" is not option A
    ("choice", "Since a photon carries energy, the answer is (d)", "D", True),
    ("choice", "answer: e", "E", True),
    ("choice", "The answer is F.", "B", False),  # F is not one of the choices (ABCDE)
    ("exact", '"Paris"', "Paris", True),
    ("exact", "Paris?!", "paris", True),
    ("exact", "Par is", "Paris", False),
    ("contains", "Answer: Paris, France.", "Paris.", True),  # the reference's own end punctuation is cut
    ("contains", "", "Paris", False),
    ("number", "It costs $1,234.50.", "1234.5", True),
    ("number", "The distance is 12km", "12", True),
    ("number", "A 25% rise", "#### 25", True),
    ("number", "1,000,000 joules", "1000000", True),
    ("number", "3/4 of 20 is 15.", "15", True),
    ("number", "It is 15. Check: 3 x 5", "15", False),  # the last number counts, not the first
    ("number", "5 to 7", "-7", False),
    ("number", "about 3e5 joules", "300000", True),  # an exponent
    ("number", "1.5E-3 s", "0.0015", True),
    ("number", "3 eggs", "3", True),  # an "e" after a number is not an exponent without digits
    ("number", "1\u2009000 J", "1000", True),  # SI thousands: thin space
    ("number", "1\u202f000\u202f000", "#### 1,000,000", True),  # narrow no-break space
    ("number", "1 000", "1000", False),  # a plain space separates two numbers: the last is 0
    ("number", "the list 1,2,3", "3", True),  # commas group three digits only
    ("number", "1,2,3", "123", False),
    ("number", "12,5000 units", "5000", True),  # not a grouping: two numbers
    ("regex", "So the answer: Blue.", "blue", True),
    ("regex", "answer:red", "blue", False),
]


@pytest.mark.parametrize(("scorer", "output", "reference", "correct"), CASES)
def test_scorer(scorer: str, output: str, reference: str, correct: bool) -> None:
    pattern = r"answer:\s*(\w+)" if scorer == "regex" else None
    assert quality.score(output, reference, None, QualityConfig(scorer=scorer, pattern=pattern)) == (correct, None)


def test_regex_compares_the_first_group() -> None:
    q = QualityConfig(scorer="regex", pattern=r"answer:\s*(\w+)")
    assert quality.score("so the answer: Blue.", "blue", None, q) == (True, None)
    assert quality.score("so the answer: red", "blue", None, q) == (False, None)
    assert quality.score("no pattern here", "blue", None, q) == (False, None)


def test_normalize_options_are_honoured() -> None:
    assert quality.score("Paris", "paris", None, QualityConfig(normalize=("whitespace",))) == (False, None)
    assert quality.score("paris.", "paris", None, QualityConfig(normalize=("case",))) == (False, None)


def test_null_verdicts_carry_their_reason() -> None:
    assert quality.score("x", "1", "HTTP 500", QualityConfig(scorer="number")) == (None, "the request failed: HTTP 500")
    assert quality.score(None, "1", None, Q) == (None, quality.NO_TEXT)
    assert quality.score("x", None, None, Q) == (None, quality.NO_REFERENCE)
    verdict, why = quality.score("42", "forty-two", None, QualityConfig(scorer="number"))
    assert verdict is None and why is not None and "holds no number" in why


def test_a_plugin_scorer_registers_through_the_hook() -> None:
    class Plugin:
        @staticmethod
        @quality.hookimpl
        def register_scorers() -> dict[str, quality.Scorer]:
            return {"length": lambda out, ref, q: len(out) == int(ref), "exact": lambda out, ref, q: True}

    pm = get_plugin_manager()
    pm.register(Plugin, name="test-scorer")
    try:
        assert quality.score("abc", "3", None, QualityConfig(scorer="length")) == (True, None)
        assert quality.score("abc", "4", None, QualityConfig(scorer="exact")) == (False, None)  # built-ins keep names
    finally:
        pm.unregister(name="test-scorer")


def test_wilson_interval_matches_its_formula() -> None:
    low, high = quality.wilson(8, 10)
    z = quality.Z95
    p, n = 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert quality.wilson(0, 0) == (None, None)
    assert quality.wilson(10, 10)[1] == pytest.approx(1.0)


def test_mcnemar_is_the_exact_binomial_on_discordant_prompts() -> None:
    a = [True] * 6 + [False] * 2 + [True, None]
    b = [False] * 6 + [True] * 2 + [True, True]
    t = quality.mcnemar(a, b)
    assert (t["pairs"], t["only_first"], t["only_second"]) == (9, 6, 2)
    assert t["p_value"] == pytest.approx(2 * (1 + 8 + 28) / 256)
    assert quality.mcnemar([True], [True])["p_value"] == 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[dataset]\nsource = "file"\npath = "p.jsonl"\nreference_field = "answer"\n', "no [quality] table"),
        ('[quality]\nscorer = "exact"\n', "needs references"),
        ('[dataset]\nreference_field = "a"\n[quality]\n', "source 'synthetic' has no references"),
        (
            '[dataset]\nsource = "file"\npath = "p.jsonl"\nreference_field = "a"\n[quality]\nscorer = "nmber"\n',
            "did you mean 'number'",
        ),
        (
            '[dataset]\nsource = "file"\npath = "p.jsonl"\nreference_field = "a"\n[quality]\nscorer = "regex"\n',
            "quality.pattern",
        ),
    ],
)
def test_config_mistakes_are_one_clear_line(
    text: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"prompt": "q", "a": "1", "answer": "1"}\n')
    config, problems = loads('model = "random:tiny-llama"\n' + text)
    from lem.configfile.loading import validate

    found = problems if config is None else [*problems, *validate(config)]
    assert any(message in p.format() for p in found if p.severity == "error"), [p.format() for p in found]


def test_references_follow_their_prompts_and_an_empty_one_is_an_error(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from lem.config import DatasetConfig
    from lem.errors import PromptError
    from lem.testing import build_tiny_model

    model = build_tiny_model(tmp_path / "m", "tiny-llama")
    tok = AutoTokenizer.from_pretrained(model)
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"q": "one"}\n{"q": ""}\n{"q": "two", "ans": 2}\n'.replace('{"q": "one"}', '{"q": "one", "ans": "1"}')
    )
    d = DatasetConfig(source="file", path=str(path), field="q", reference_field="ans", num_prompts=5)
    got = load_prompts(d, tok, seed=1)
    assert [(p.text, p.reference) for p in got.prompts] == [("one", "1"), ("two", "2")]
    path.write_text('{"q": "one", "ans": " "}\n')
    with pytest.raises(PromptError, match=r"row 0 .* empty reference"):
        load_prompts(d, tok, seed=1)
    with pytest.raises(PromptError, match="reference_field = 'nope': no such field"):
        load_prompts(DatasetConfig(source="file", path=str(path), field="q", reference_field="nope"), tok, seed=1)


def test_hub_references_follow_their_prompts_and_bad_ones_are_one_line(tmp_path: Path) -> None:
    """A Hugging Face source (a dataset saved to disk, read by ``datasets``): the reference column's value
    follows each prompt, also a number (GSM8K's ``#### 72``); a missing column or an empty reference is a
    :class:`PromptError` naming the field and the row."""
    datasets = pytest.importorskip("datasets")
    from transformers import AutoTokenizer

    from lem.config import DatasetConfig
    from lem.errors import PromptError
    from lem.testing import build_tiny_model

    tok = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m", "tiny-llama"))
    rows = {"question": ["How many?", "And now?", "Which one?"], "answer": ["#### 72", "1,000", "(B)"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    hub = DatasetConfig(
        source="huggingface", name=str(tmp_path / "ds"), field="question", reference_field="answer", num_prompts=3
    )
    got = load_prompts(hub, tok, seed=0)
    assert [(p.text, p.reference) for p in got.prompts] == list(zip(rows["question"], rows["answer"], strict=True))
    assert "references 'answer'" in got.description
    with pytest.raises(PromptError, match=r"reference_field = 'solution': no such field .*'question', 'answer'"):
        load_prompts(
            DatasetConfig(source="huggingface", name=str(tmp_path / "ds"), reference_field="solution"), tok, seed=0
        )
    datasets.Dataset.from_dict({"question": ["q0", "q1"], "answer": ["1", ""]}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(PromptError, match=r"row 1 .* empty reference"):
        load_prompts(
            DatasetConfig(
                source="huggingface", name=str(tmp_path / "empty"), field="question", reference_field="answer"
            ),
            tok,
            seed=0,
        )
