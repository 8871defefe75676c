"""Rebuild src/secondpass/data/sample_*.jsonl from a BEIR SciFact directory (one-off tooling).

The demo ships a small slice of SciFact so it runs offline and never reads data
outside the repository. The slice holds 10 test claims, every abstract judged
relevant to them, the 15 abstracts nearest to each claim by all-MiniLM-L6-v2
(hard distractors, so reranking has something to do) and random abstracts up to
300 documents. Usage:

    python scripts/make_sample_corpus.py /path/to/scifact
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from secondpass.datasets import iter_corpus, load_beir
from secondpass.pipeline.dense import SentenceTransformerEncoder

N_QUERIES = 10
NEIGHBOURS = 15
TOTAL_DOCS = 300
SEED = 20240917
OUT = Path(__file__).resolve().parent.parent / "src" / "secondpass" / "data"


def main(source: str) -> None:
    dataset = load_beir(source)
    rng = random.Random(SEED)
    query_ids = sorted(rng.sample(sorted(dataset.queries), N_QUERIES), key=int)
    docs = {doc.id: doc for doc in iter_corpus(dataset.corpus_path)}
    encoder = SentenceTransformerEncoder(show_progress_bar=True)
    ids = list(docs)
    doc_vecs = encoder.encode_array([docs[i].passage for i in ids])
    query_vecs = encoder.encode_array([dataset.queries[q] for q in query_ids])
    chosen: dict[str, None] = {}
    for row, qid in enumerate(query_ids):
        for doc_id in dataset.qrels[qid]:
            chosen[doc_id] = None
        order = (doc_vecs @ query_vecs[row]).argsort()[::-1]
        picked = 0
        for j in order:
            if ids[j] not in chosen and ids[j] not in dataset.qrels[qid]:
                chosen[ids[j]] = None
                picked += 1
            if picked == NEIGHBOURS:
                break
    rest = [i for i in ids if i not in chosen]
    for doc_id in rng.sample(rest, TOTAL_DOCS - len(chosen)):
        chosen[doc_id] = None
    ordered = sorted(chosen, key=int)
    with (OUT / "sample_corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc_id in ordered:
            d = docs[doc_id]
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    with (OUT / "sample_queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid in query_ids:
            relevant = sorted(dataset.qrels[qid], key=int)
            fh.write(json.dumps({"_id": qid, "text": dataset.queries[qid], "relevant": relevant}) + "\n")
    print(f"wrote {len(ordered)} docs and {len(query_ids)} queries to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
