"""Remote scorers against a real ``secondpass serve`` process on the tiny cross-encoder.

The service speaks Cohere v2 and TEI; scoring through it must give the scores
the same model gives locally (same weights, fp32, torch), split over several
calls. Uses the shared ``service`` process, so it costs no extra start-up.
"""

from __future__ import annotations

import pytest
from tests.fixtures.service import ServiceProcess

from secondpass.pipeline.remote import RemoteSettings, build_remote_scorer
from secondpass.pipeline.scorer import CrossEncoderScorer

pytestmark = pytest.mark.integration

QUERY = "what do cats eat"
PASSAGES = [
    "Cats are obligate carnivores and eat mostly meat.",
    "The stock market fell sharply on Tuesday.",
    "Kittens drink milk from their mother.",
    "Paris is the capital of France.",
    "Dry food and wet food are both common for house cats.",
]


@pytest.mark.parametrize("reference", ["tei:{url}", "cohere:tiny@{url}"])
def test_scores_through_serve_equal_the_local_model(
    service: ServiceProcess, tiny_scorer: CrossEncoderScorer, reference: str
) -> None:
    scorer = build_remote_scorer(
        reference.format(url=service.url),
        settings=RemoteSettings(api_key="unused-on-loopback", max_documents=2, max_concurrency=3),
    )
    remote = scorer.score(QUERY, PASSAGES)
    local = tiny_scorer.score(QUERY, PASSAGES)
    assert scorer.calls == 3  # 5 passages at 2 per call, merged back in input order
    assert [r.normalized for r in remote] == pytest.approx([x.normalized for x in local], abs=1e-4)
    if reference.startswith("tei"):  # TEI's raw_scores are the logits themselves
        assert [r.raw for r in remote] == pytest.approx([x.raw for x in local], abs=1e-4)
    scorer.close()
