"""`evaluate` of an encoder: scored pairs as sentence-transformers' EmbeddingSimilarityEvaluator, a retrieval
set as its InformationRetrievalEvaluator (a random tiny sentence-transformers directory, the real library);
`finetune embed --valid DIR` picks its best model by NDCG@10; `mine-negatives` as mine_hard_negatives."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, perturb, run_all

import bertforge
from bertforge import BertforgeError
from bertforge.api import evaluate_file, finetune
from bertforge.assets import fetch
from bertforge.infer import Embedder, save_sentence_transformer
from bertforge.mining import MineSettings, mine_hard_negatives
from bertforge.retrieval import read_retrieval_set, write_retrieval_set
from bertforge.train import TrainArgs

WORDS = "cat dog bird fish tree river city road music film book game food water stone light".split()
IR_KEYS = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "recall@100", "accuracy@1", "precision@10")


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory) -> Path:
    """A random tiny encoder (minilm-l6's vocabulary) saved as a sentence-transformers directory."""
    tok = bertforge.Tokenizer.from_pretrained(fetch("minilm-l6", quiet=True))
    torch.manual_seed(0)
    model = bertforge.BertModel(
        bertforge.BertConfig.preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=128)
    )
    return save_sentence_transformer(perturb(model, 0, scale=0.5), tmp_path_factory.mktemp("st") / "tiny", tok)


def _retrieval_set(path: Path, seed: int = 1):
    rnd = random.Random(seed)
    corpus = [(f"d{i}", " ".join(rnd.sample(WORDS, 5))) for i in range(150)]
    queries = [
        (f"q{i}", " ".join(rnd.sample(WORDS, 3)), rnd.sample([c for c, _ in corpus], rnd.choice([1, 1, 2, 3])))
        for i in range(40)
    ]
    queries.append(("q-none", "cat dog", []))  # no relevant document: left out, as sentence-transformers leaves it
    return write_retrieval_set(path, corpus, queries), corpus, queries


def test_retrieval_metrics_equal_information_retrieval_evaluator(st_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    rs, corpus, queries = _retrieval_set(tmp_path / "rs")
    ours = evaluate_file(st_dir, rs)
    evaluator = InformationRetrievalEvaluator(
        {q: t for q, t, _ in queries}, dict(corpus), {q: set(r) for q, _, r in queries}, name="x",
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10, 100], map_at_k=[100],
    )  # fmt: skip
    reference = evaluator(SentenceTransformer(str(st_dir), device="cpu"))
    assert 0.05 < reference["x_cosine_recall@100"] < 0.95  # neither nothing nor everything found
    for key in IR_KEYS:
        assert ours[key.replace("@", "_at_")] == pytest.approx(reference[f"x_cosine_{key}"], abs=1e-9), key


def test_similarity_metrics_equal_embedding_similarity_evaluator(st_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    rnd = random.Random(2)
    pairs = [(" ".join(rnd.sample(WORDS, 4)), " ".join(rnd.sample(WORDS, 4)), rnd.random()) for _ in range(60)]
    data = tmp_path / "sts.jsonl"
    data.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in pairs))
    ours = evaluate_file(st_dir, data)
    evaluator = EmbeddingSimilarityEvaluator(*map(list, zip(*pairs, strict=True)))
    reference = evaluator(SentenceTransformer(str(st_dir), device="cpu"))
    assert ours["spearman"] == pytest.approx(reference["spearman_cosine"], abs=1e-6)
    assert ours["pearson"] == pytest.approx(reference["pearson_cosine"], abs=1e-5)


def test_cli_evaluate_an_encoder_and_finetune_embed_validates_on_a_retrieval_set(st_dir, tmp_path):
    rs, corpus, queries = _retrieval_set(tmp_path / "rs")
    text = dict(corpus)
    rows = [{"anchor": t, "positive": text[rel[0]]} for _, t, rel in queries if rel]
    train = tmp_path / "pairs.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    out = tmp_path / "embed"
    args = TrainArgs(out=out / "run", max_steps=10, batch_size=16, lr=1e-3, eval_every=5, progress=False)
    best = finetune("embed", st_dir, train, out, valid_file=rs, args=args)
    assert set(best) >= {"ndcg_at_10", "mrr_at_10", "recall_at_100"}
    history = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [h for h in history if "ndcg_at_10" in h]
    assert best["ndcg_at_10"] == max(h["ndcg_at_10"] for h in scored)  # the default selection metric
    shown, missing = run_all(
        ["evaluate", "-m", out, "--data", rs], ["evaluate", "-m", st_dir, "--data", tmp_path], ok=False
    )
    lines = dict(line.split() for line in shown.stdout.splitlines())
    assert float(lines["ndcg_at_10"]) == pytest.approx(evaluate_file(out, rs)["ndcg_at_10"], abs=1e-4)
    assert_one_line_error(missing, "is a directory")


@pytest.mark.parametrize(
    ("corpus", "queries", "message"),
    [
        (
            '{"id": "d1", "text": "a"}\n',
            '{"id": "q1", "text": "b", "relevant": ["d9"]}\n',
            "relevant id 'd9' is not in",
        ),
        (
            '{"id": "d1", "text": "a"}\n',
            '{"id": "q1", "text": "b", "relevant": "d1"}\n',
            "'relevant' is 'd1', not a list",
        ),
        (
            '{"id": "d1", "text": "a"}\n{"id": "d1", "text": "c"}\n',
            '{"id": "q1", "text": "b", "relevant": []}\n',
            "id 'd1' again",
        ),
        (
            '{"id": "d1", "text": "a"}\n',
            '{"id": "q1", "text": "b", "relevant": []}\n',
            "no query has a relevant document",
        ),
    ],
)
def test_bad_retrieval_sets_are_one_line_errors(tmp_path, corpus, queries, message):
    (tmp_path / "corpus.jsonl").write_text(corpus)
    (tmp_path / "queries.jsonl").write_text(queries)
    with pytest.raises(BertforgeError, match=message):
        read_retrieval_set(tmp_path)


def _pairs(seed: int = 0):
    rnd = random.Random(seed)
    anchors = [" ".join(rnd.sample(WORDS, 3)) for _ in range(30)]
    positives = [" ".join(rnd.sample(WORDS, 5)) for _ in range(30)]
    anchors[3] = anchors[1]  # an anchor with two positives
    return anchors, positives, [" ".join(rnd.sample(WORDS, 4)) for _ in range(40)]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"range_min": 2, "range_max": 12, "num_negatives": 4},
        {"absolute_margin": 0.01},
        {"relative_margin": 0.02, "max_score": 0.99},
        {"min_score": 0.5, "range_max": 20},
    ],
)
def test_mined_triplets_equal_mine_hard_negatives(st_dir, settings):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as reference_mine

    anchors, positives, corpus = _pairs()
    dataset = Dataset.from_dict({"anchor": anchors, "positive": positives})
    st = SentenceTransformer(str(st_dir), device="cpu")
    reference = reference_mine(dataset, st, corpus=corpus, verbose=False, **settings)
    ours, stats = mine_hard_negatives(
        Embedder.from_pretrained(st_dir), anchors, positives, corpus, MineSettings(**settings)
    )
    assert ours == list(zip(reference["anchor"], reference["positive"], reference["negative"], strict=True))
    assert stats["triplets"] == len(ours) > 0 and stats["queries"] == 29


def test_cli_mine_negatives_writes_triplets_finetune_reads(st_dir, tmp_path):
    anchors, positives, corpus = _pairs()
    pairs, extra = tmp_path / "pairs.jsonl", tmp_path / "corpus.jsonl"
    pairs.write_text(
        "".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in zip(anchors, positives, strict=True))
    )
    extra.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus))
    out = tmp_path / "triplets.jsonl"
    mined, bad = run_all(
        ["mine-negatives", "-m", st_dir, "-i", pairs, "-o", out, "--corpus", extra, "--num-negatives", "2"],
        ["mine-negatives", "-m", st_dir, "-i", pairs, "-o", out, "--range-min", "5", "--range-max", "6",
         "--num-negatives", "2"],
        ok=False,
    )  # fmt: skip
    assert mined.returncode == 0 and mined.stdout.startswith(
        f"wrote {out} (60 of 60 triplets for 29 anchors, 70 candidates"
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    expected, _ = mine_hard_negatives(
        Embedder.from_pretrained(st_dir), anchors, positives, corpus, MineSettings(num_negatives=2)
    )
    assert [(r["anchor"], r["positive"], r["negative"]) for r in rows] == expected
    assert_one_line_error(bad, "cannot mine 2 negatives from ranks 5 to 6")
    from bertforge.modeldir import ModelDir
    from bertforge.tasks import finetune_task

    task = finetune_task("embed", None, ModelDir.open(st_dir))
    assert [e.texts for e in task.read(out, labelled=True)] == expected


def test_squad_becomes_a_retrieval_set_split_by_article(tmp_path):
    from bertforge.data.squad import retrieval_split

    articles = [
        {"title": f"Article {a}", "paragraphs": [
            {"context": f"Paragraph {p} of article {a}.", "qas": [
                {"id": f"{a}-{p}-{q}", "question": f"Question {q} on {a}/{p}?", "answers": []} for q in range(3)]}
            for p in range(2)]}
        for a in range(20)
    ]  # fmt: skip
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "1.1", "data": articles}))
    counts = retrieval_split(squad, tmp_path / "out")
    assert counts == retrieval_split(squad, tmp_path / "again")  # deterministic
    assert counts["train_paragraphs"] + counts["test_paragraphs"] == 40 and 0 < counts["test_paragraphs"] < 20
    assert counts["train_questions"] + counts["test_questions"] == 120
    test, train = read_retrieval_set(tmp_path / "out" / "test"), read_retrieval_set(tmp_path / "out" / "train")
    assert not {d.split("/")[0] for d in test.corpus_ids} & {d.split("/")[0] for d in train.corpus_ids}
    for qid, gold in zip(test.query_ids, test.relevant, strict=True):
        a, p, _ = qid.split("-")
        assert gold == {f"Article {a}/{p}"}
    pairs = [json.loads(x) for x in (tmp_path / "out" / "train" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == counts["train_questions"] and pairs[0]["positive"].startswith("Paragraph")


def test_retrieve_then_rerank_evaluation_reorders_the_top_candidates(st_dir, tmp_path):
    import transformers
    from conftest import TINY
    from sentence_transformers import CrossEncoder

    from bertforge import metrics
    from bertforge.retrieval import top_k

    tok = transformers.AutoTokenizer.from_pretrained(fetch("minilm-l6", quiet=True))
    torch.manual_seed(1)
    config = transformers.BertConfig(**{**TINY, "vocab_size": tok.vocab_size, "num_labels": 1})
    ce_dir = tmp_path / "ce"
    perturb(transformers.BertForSequenceClassification(config), 1, scale=0.5).save_pretrained(ce_dir)
    tok.save_pretrained(ce_dir)
    rs_dir, _, _ = _retrieval_set(tmp_path / "rs")
    got = evaluate_file(st_dir, rs_dir, rerank=ce_dir, candidates=5)
    rs = read_retrieval_set(rs_dir)
    emb = Embedder.from_pretrained(st_dir)
    ranked = top_k(emb(rs.queries, normalize=True), emb(rs.corpus, normalize=True), rs.corpus_ids, 100)
    ce = CrossEncoder(str(ce_dir), device="cpu", max_length=TINY["max_position_embeddings"])
    expected = []
    for query, row in zip(rs.queries, ranked, strict=True):
        order = [r["corpus_id"] for r in ce.rank(query, [rs.corpus[j] for j in row[:5]])]
        expected.append([rs.corpus_ids[row[i]] for i in order] + [rs.corpus_ids[j] for j in row[5:]])
    assert got == pytest.approx(metrics.ranking(expected, rs.relevant), abs=1e-9)
    assert got["recall_at_100"] == pytest.approx(
        evaluate_file(st_dir, rs_dir)["recall_at_100"]
    )  # beyond 5: as retrieved
    with pytest.raises(BertforgeError, match="--rerank re-orders the hits of an encoder on a retrieval set"):
        pairs = tmp_path / "sts.jsonl"
        pairs.write_text(json.dumps({"sentence1": "a cat", "sentence2": "a dog", "score": 0.5}) + "\n")
        evaluate_file(st_dir, pairs, rerank=ce_dir)
