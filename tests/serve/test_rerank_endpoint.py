"""POST /v1/rerank on the real `bertforge serve` process (loopback) for a cross-encoder as transformers saves
it: Cohere's / TEI's body in and out, the same order and scores as sentence-transformers' CrossEncoder."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import transformers
from test_app import Server, error_of

from bertforge.assets import fetch

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128
)
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "France's capital city is Paris, on the Seine."]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("rerank-serve")
    tok = transformers.AutoTokenizer.from_pretrained(fetch("minilm-l6", quiet=True))
    torch.manual_seed(0)
    config = transformers.BertConfig(**TINY, vocab_size=tok.vocab_size, num_labels=1)
    model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.5)
    model.save_pretrained(d / "ce")
    tok.save_pretrained(d / "ce")
    s = Server(d / "ce", d, "--max-texts", "4").wait()
    yield s, d / "ce"
    assert s.stop() == 0


def test_rerank_answers_as_cross_encoder_ranks(server):
    from sentence_transformers import CrossEncoder

    s, model = server
    reference = CrossEncoder(str(model), device="cpu").rank("capital of France", DOCS)
    with s.client() as c:
        health = c.get("/health").json()
        assert health["task"] == "rerank" and health["endpoints"] == ["/v1/rerank"]
        body = c.post("/v1/rerank", json={"query": "capital of France", "documents": DOCS}).json()
        assert [r["index"] for r in body["results"]] == [r["corpus_id"] for r in reference]
        np.testing.assert_allclose(
            [r["relevance_score"] for r in body["results"]], [r["score"] for r in reference], atol=1e-5
        )
        assert all(r.get("document") is None for r in body["results"])
        top = c.post(
            "/v1/rerank", json={"query": "capital of France", "documents": DOCS, "top_n": 2, "return_documents": True}
        ).json()["results"]
        assert [r["document"]["text"] for r in top] == [DOCS[r["corpus_id"]] for r in reference[:2]]

        def one(i: int) -> list[int]:  # concurrent requests are batched together, each answered alone
            docs = DOCS[i % 3 :] + DOCS[: i % 3]
            return [
                r["index"]
                for r in c.post("/v1/rerank", json={"query": "capital of France", "documents": docs}).json()["results"]
            ]

        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(one, range(6)))
        for i, order in enumerate(got):
            docs = DOCS[i % 3 :] + DOCS[: i % 3]
            assert [docs[j] for j in order] == [DOCS[r["corpus_id"]] for r in reference]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"query": "q", "documents": []}, 422, "documents is empty"),
        ({"query": " ", "documents": ["d"]}, 422, "query is empty"),
        ({"query": "q", "documents": ["d"] * 5}, 413, "5 documents in one request; this server takes at most 4"),
        ({"query": "q", "documents": ["d"], "top_n": 0}, 422, "top_n"),
        ({"query": "q", "texts": ["d"]}, 422, "documents: Field required"),
    ],
)
def test_bad_requests_are_one_line_errors(server, body, status, message):
    s, _ = server
    with s.client() as c:
        assert message in error_of(c.post("/v1/rerank", json=body), status)
        assert "rerank" in error_of(c.post("/v1/embed", json={"texts": ["x"]}), 404)
