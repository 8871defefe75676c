"""Token-budget planning, the pipelined runner, OOM halving and exact pair assembly."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secondpass.errors import RerankError
from secondpass.pipeline.batching import (
    BatchRunner,
    PairTokenizer,
    collate_pairs,
    padded_length,
    plan_batches,
)


@given(st.lists(st.integers(1, 600), max_size=200), st.integers(1, 20000), st.integers(1, 64))
def test_plan_covers_every_item_once_within_budget(
    lengths: list[int], budget: int, cap: int
) -> None:
    plan = plan_batches(lengths, token_budget=budget, max_batch_size=cap)
    flat = [index for batch in plan for index in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in plan:
        assert 1 <= len(batch) <= cap
        if len(batch) > 1:
            assert max(lengths[i] for i in batch) * len(batch) <= budget
    widths = [max(lengths[i] for i in batch) for batch in plan]
    assert widths == sorted(widths, reverse=True), "batches go longest first"


def test_plan_is_by_tokens_not_by_count() -> None:
    short = plan_batches([10] * 100, token_budget=1000, max_batch_size=256)
    long_ = plan_batches([500] * 100, token_budget=1000, max_batch_size=256)
    assert len(short) == 1 and len(long_) == 50


class FakeOOM(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError at the runner's forward boundary."""


def _runner(
    lengths: Sequence[int], *, limit: int | None = None, overlap: bool = True, budget: int = 4000
):
    calls: list[list[int]] = []

    def forward(batch: list[int]) -> list[float]:
        if limit is not None and len(batch) * max(lengths[i] for i in batch) > limit:
            raise FakeOOM("CUDA out of memory (simulated)")
        calls.append(list(batch))
        return [float(i) * 10.0 + lengths[i] for i in batch]

    runner: BatchRunner[list[int]] = BatchRunner(
        collate=lambda batch: list(batch),
        forward=forward,
        token_budget=budget,
        max_batch_size=64,
        overlap=overlap,
        is_oom=lambda exc: isinstance(exc, FakeOOM),
    )
    return runner, calls


@pytest.mark.parametrize("overlap", [True, False])
def test_runner_restores_input_order(overlap: bool) -> None:
    rng = random.Random(7)
    lengths = [rng.randint(5, 500) for _ in range(300)]
    runner, calls = _runner(lengths, overlap=overlap)
    scores = runner.run(lengths)
    assert scores == [float(i) * 10.0 + length for i, length in enumerate(lengths)]
    assert len(calls) == runner.stats.batches > 1


def test_runner_halves_on_oom_and_adapts_budget() -> None:
    rng = random.Random(3)
    lengths = [rng.randint(50, 400) for _ in range(120)]
    runner, calls = _runner(lengths, limit=1500, budget=8000)
    scores = runner.run(lengths)
    assert scores == [float(i) * 10.0 + length for i, length in enumerate(lengths)]
    assert runner.stats.oom_splits >= 1
    assert runner.token_budget < 8000
    assert all(len(b) * max(lengths[i] for i in b) <= 1500 for b in calls)
    assert sorted(i for batch in calls for i in batch) == list(range(len(lengths)))


def test_runner_gives_up_on_a_single_input_that_does_not_fit() -> None:
    runner, _ = _runner([100, 900], limit=500)
    with pytest.raises(RerankError, match="single input of 900 tokens"):
        runner.run([100, 900])


def test_runner_reraises_other_errors_and_stops_its_thread() -> None:
    before = {t.ident for t in threading.enumerate()}

    def collate(batch: list[int]) -> list[int]:
        if 5 in batch:
            raise ValueError("bad batch")
        return batch

    runner: BatchRunner[list[int]] = BatchRunner(
        collate=collate, forward=lambda b: [0.0] * len(b), token_budget=10, max_batch_size=1
    )
    with pytest.raises(ValueError, match="bad batch"):
        runner.run([10] * 20)
    leaked = [
        t for t in threading.enumerate() if t.ident not in before and t.name == "secondpass-collate"
    ]
    assert not leaked


def test_next_batch_is_collated_while_the_current_one_runs() -> None:
    collated = threading.Event()
    overlapped: list[bool] = []

    def collate(batch: list[int]) -> list[int]:
        if batch == [1]:
            collated.set()
        return batch

    def forward(batch: list[int]) -> list[float]:
        if batch == [0]:
            # Batch 1 is collated by the producer thread while batch 0 is "running".
            overlapped.append(collated.wait(timeout=10))
        return [0.0] * len(batch)

    runner: BatchRunner[list[int]] = BatchRunner(
        collate=collate, forward=forward, token_budget=10, max_batch_size=1
    )
    runner.run([10, 10, 10])
    assert overlapped == [True]


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_cross_encoder_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_cross_encoder_dir))


def test_pair_inputs_equal_the_tokenizers_own_longest_first(hf_tokenizer) -> None:
    from secondpass.pipeline.passages import longest_first

    pairs_tok = PairTokenizer.from_pretrained_tokenizer(hf_tokenizer, max_length=64)
    assert pairs_tok.num_special == 3
    words = "alpha beta gamma délta 東京 emoji🙂 photosynthesis unbelievable x".split()
    rng = random.Random(11)
    for _ in range(200):
        query = " ".join(rng.choice(words) for _ in range(rng.randint(0, 60)))
        passage = " ".join(rng.choice(words) for _ in range(rng.randint(1, 80)))
        expected = hf_tokenizer(query, passage, truncation="longest_first", max_length=64)
        q_ids, p_ids = pairs_tok.encode([query, passage])
        keep_q, keep_p = longest_first(len(q_ids), len(p_ids), pairs_tok.pair_budget)
        built = pairs_tok.build(q_ids[:keep_q], p_ids[:keep_p])
        assert built.input_ids == expected["input_ids"]
        assert built.token_type_ids == expected["token_type_ids"]


def test_collate_pads_right_with_mask(hf_tokenizer) -> None:
    pairs_tok = PairTokenizer.from_pretrained_tokenizer(hf_tokenizer, max_length=64)
    a = pairs_tok.build([1000], [2000, 2001, 2002])
    b = pairs_tok.build([1000], [2000])
    features = collate_pairs([a, b], pad_id=pairs_tok.pad_id)
    assert features["input_ids"].tolist()[1][-2:] == [pairs_tok.pad_id] * 2
    assert features["attention_mask"].tolist() == [[1] * 7, [1] * 5 + [0, 0]]
    assert features["token_type_ids"].tolist()[0] == [0, 0, 0, 1, 1, 1, 1]


def test_collate_rounds_the_width_up_to_a_multiple(hf_tokenizer) -> None:
    pairs_tok = PairTokenizer.from_pretrained_tokenizer(hf_tokenizer, max_length=64)
    a = pairs_tok.build([1000], [2000, 2001, 2002])
    b = pairs_tok.build([1000], [2000])
    features = collate_pairs([a, b], pad_id=pairs_tok.pad_id, pad_to_multiple_of=16)
    assert features["input_ids"].shape == (2, 16)
    assert features["attention_mask"].tolist() == [[1] * 7 + [0] * 9, [1] * 5 + [0] * 11]
    assert features["token_type_ids"].tolist()[0][:7] == [0, 0, 0, 1, 1, 1, 1]
    assert [padded_length(n, 16) for n in (1, 16, 17)] == [16, 16, 32]
    assert padded_length(7, 1) == 7
