"""Passage templates and the long-document policy (pure functions, plus one real tokenizer)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secondpass.errors import ConfigurationError
from secondpass.pipeline.passages import (
    PassageTemplate,
    WhitespaceTruncator,
    is_blank,
    longest_first,
    plan_windows,
    split_blank,
)


@given(st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 1024))
def test_longest_first_fits_and_keeps_what_fits(first: int, second: int, budget: int) -> None:
    keep_first, keep_second = longest_first(first, second, budget)
    assert 0 <= keep_first <= first and 0 <= keep_second <= second
    assert keep_first + keep_second <= max(budget, 0)
    if first + second <= budget:
        assert (keep_first, keep_second) == (first, second)
    elif min(first, second) <= budget // 2:
        # The short side is kept whole and the long side fills the rest exactly.
        assert keep_first + keep_second == budget
        assert min(first, second) in (keep_first, keep_second)


def test_longest_first_cuts_the_passage_tail_for_a_short_query() -> None:
    assert longest_first(6, 5000, 509) == (6, 503)
    assert longest_first(400, 400, 509) == (254, 255)


@given(st.integers(1, 300), st.integers(1, 20000), st.integers(20, 600), st.integers(1, 12), st.integers(0, 128))
def test_chunk_windows_fit_overlap_and_cover(query: int, passage: int, budget: int, cap: int, overlap: int) -> None:
    plan = plan_windows(query, passage, budget, policy="chunk", max_chunks=cap, overlap=overlap)
    assert 1 <= len(plan.windows) <= cap
    assert plan.query_keep <= query
    assert plan.windows[0][0] == 0
    for start, end in plan.windows:
        assert 0 <= start < end <= passage or passage == 0
        assert plan.query_keep + (end - start) <= budget
    for (_, end_a), (start_b, _) in zip(plan.windows, plan.windows[1:], strict=False):
        assert (start_b < end_a) if overlap else (start_b == end_a)
    covered_to = plan.windows[-1][1]
    assert plan.truncated == (covered_to < passage)


def test_chunk_equals_truncate_when_the_pair_fits() -> None:
    assert plan_windows(10, 100, 509, policy="chunk") == plan_windows(10, 100, 509, policy="truncate")


def test_truncate_reports_the_cut() -> None:
    plan = plan_windows(8, 2000, 509, policy="truncate")
    assert plan.windows == ((0, 501),) and plan.truncated and plan.query_keep == 8


def test_chunk_cap_marks_document_truncated() -> None:
    plan = plan_windows(8, 100_000, 509, policy="chunk", max_chunks=3, overlap=32)
    assert len(plan.windows) == 3 and plan.truncated


def test_bad_policy_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="long_document"):
        plan_windows(1, 1, 10, policy="summarise")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_chunks"):
        plan_windows(1, 1, 10, policy="chunk", max_chunks=0)


def test_blank_detection_covers_unicode_whitespace() -> None:
    assert is_blank("") and is_blank("  \n\t") and is_blank("\u3000\u00a0")
    assert not is_blank(" x ") and not is_blank("東京")
    assert split_blank(["a", " ", "b", ""]) == ([0, 2], [1, 3])


def test_template_joins_fields_in_order_and_skips_blank_ones() -> None:
    template = PassageTemplate(fields=("title", "text", "tags"))
    assert template.render({"text": "Body text.", "title": "Title", "tags": "  "}) == "Title\nBody text."
    assert template.render({"title": " ", "other": "ignored"}) == ""


def test_template_word_budget_without_tokenizer() -> None:
    template = PassageTemplate(fields=("title", "text"), budgets={"title": 3}, labels=True)
    text = template.render({"title": "one two three four five", "text": "body"})
    assert text == "title: one two three\ntext: body"


def test_template_rejects_budgets_for_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ConfigurationError, match="not in fields"):
        PassageTemplate(fields=("text",), budgets={"title": 5})
    with pytest.raises(ConfigurationError, match="positive integer"):
        PassageTemplate(fields=("text",), budgets={"text": 0})
    assert PassageTemplate(fields="text").fields == ("text",)  # type: ignore[arg-type]


def test_whitespace_truncator_keeps_original_spacing() -> None:
    assert WhitespaceTruncator().truncate("a  b\tc d", 3) == "a  b\tc"
    assert WhitespaceTruncator().truncate("a b", 10) == "a b"


def test_bound_template_budgets_count_model_tokens(tiny_cross_encoder_dir) -> None:
    from transformers import AutoTokenizer

    from secondpass.pipeline.scorer import CrossEncoderScorer

    scorer = CrossEncoderScorer(
        model=str(tiny_cross_encoder_dir), device="cpu", dtype="float32", backend="torch"
    )
    template = scorer.bind_template(PassageTemplate(fields=("title", "text"), budgets={"title": 5, "text": 40}))
    assert not scorer.is_loaded, "binding a template must not load the model"
    title = "Überraschende Ergebnisse: unbelievably photosynthetic cyanobacteria 東京 🚀 " * 5
    body = "The mitochondria is the powerhouse of the cell. " * 4000  # ~200,000 characters
    rendered = template.render({"title": title, "text": body})
    assert scorer.is_loaded
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_cross_encoder_dir))
    cut_title, cut_body = rendered.split("\n")
    assert title.startswith(cut_title) and body.startswith(cut_body)
    assert len(tokenizer(cut_title, add_special_tokens=False)["input_ids"]) == 5
    assert len(tokenizer(cut_body, add_special_tokens=False)["input_ids"]) == 40
