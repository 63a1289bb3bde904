"""`finetune embed`: the losses equal sentence-transformers' (MultipleNegativesRankingLoss, its symmetric
form, with negatives, CoSENT, Matryoshka) on the same batch, a batch is scored whole and as if it held no
text twice, and a model trained here on STS-B is a sentence-transformers directory that the real library
loads with the same embeddings and scores as `bertforge evaluate` does."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_all, write_csv
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
from sentence_transformers.sentence_transformer.losses import (
    CoSENTLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

from bertforge import BertforgeError, Embedder
from bertforge.api import evaluate_file, finetune
from bertforge.assets import fetch
from bertforge.distributed import Dist, Schedule
from bertforge.modeldir import ModelDir
from bertforge.tasks import TASKS, TaskSpec, for_model, served
from bertforge.tasks.embed import cosent_loss, matryoshka_loss, mnrl_loss
from bertforge.tokenizer import Tokenizer
from bertforge.train import TrainArgs, _micro_batches

DIMS = (384, 256, 128, 64)


@pytest.fixture(scope="module")
def stsb() -> dict[str, list[tuple[str, str, float]]]:
    """split -> (sentence1, sentence2, score) rows of the STS Benchmark."""
    root = fetch("stsb", quiet=True)
    out = {}
    for split in ("train", "valid", "test"):
        with (root / f"{split}.csv").open(encoding="utf-8", newline="") as f:
            out[split] = [(r["sentence1"], r["sentence2"], float(r["score"])) for r in csv.DictReader(f)]
    return out


@pytest.fixture(scope="module")
def st_minilm(minilm_dir) -> SentenceTransformer:
    return SentenceTransformer(str(minilm_dir), device="cpu").eval()


def distinct(rows: list[tuple], n: int) -> list[tuple]:
    """The first ``n`` rows none of whose texts is in an earlier kept row."""
    seen: set[str] = set()
    kept = []
    for r in rows:
        texts = [t for t in r if isinstance(t, str)]
        if seen.isdisjoint(texts) and len(set(texts)) == len(texts):
            kept.append(r)
            seen.update(texts)
        if len(kept) == n:
            break
    return kept


def st_mnrl(model: SentenceTransformer, symmetric: bool) -> MultipleNegativesRankingLoss:
    """sentence-transformers' MNRL, or MultipleNegativesSymmetricRankingLoss as that class now builds it."""
    if symmetric:
        directions = ("query_to_doc", "doc_to_query")
        return MultipleNegativesRankingLoss(model, scale=20.0, directions=directions, partition_mode="per_direction")
    return MultipleNegativesRankingLoss(model, scale=20.0)


def embed_task(tokenizer: Tokenizer, **settings):
    return TASKS["embed"](TaskSpec("embed", max_length=128, extra=settings), tokenizer)


# -- the losses, on the same embeddings ----------------------------------------------------------------------
@pytest.mark.parametrize("columns", [2, 3], ids=["pairs", "triplets"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["mnrl", "symmetric"])
def test_mnrl_equals_sentence_transformers(st_minilm, columns, symmetric):
    g = torch.Generator().manual_seed(columns)
    cols = [torch.randn(8, 32, generator=g) for _ in range(columns)]
    expected = st_mnrl(st_minilm, symmetric).compute_loss_from_embeddings(cols, None)
    rows = torch.arange(columns * 8).reshape(columns, 8)  # every text distinct: nothing is masked
    for got in (mnrl_loss(cols, 20.0, symmetric), mnrl_loss(cols, 20.0, symmetric, rows)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_cosent_equals_sentence_transformers(st_minilm):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    scores = torch.randint(0, 11, (16,), generator=g).float() / 2  # 0-5 in halves: ties, as in STS-B
    expected = CoSENTLoss(st_minilm, scale=20.0).compute_loss_from_embeddings([a, b], scores)
    torch.testing.assert_close(cosent_loss(a, b, scores, 20.0), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("loss", ["mnrl", "cosent"])
def test_matryoshka_equals_sentence_transformers(st_minilm, stsb, loss):
    """MatryoshkaLoss runs the model itself: ours is given the embeddings that model makes."""
    rows = distinct(stsb["train"], 8)
    texts = [[r[0] for r in rows], [r[1] for r in rows]]
    scores = torch.tensor([r[2] for r in rows])
    inner = CoSENTLoss(st_minilm) if loss == "cosent" else MultipleNegativesRankingLoss(st_minilm)
    with torch.no_grad():
        expected = MatryoshkaLoss(st_minilm, inner, list(DIMS))([st_minilm.preprocess(t) for t in texts], scores)
        embeddings = [st_minilm(st_minilm.preprocess(t))["sentence_embedding"] for t in texts]

    def ours(cols):
        return cosent_loss(cols[0], cols[1], scores) if loss == "cosent" else mnrl_loss(cols)

    torch.testing.assert_close(matryoshka_loss(ours, embeddings, DIMS), expected, atol=1e-5, rtol=0)


# -- a batch of the task, as the training loop makes it ---------------------------------------------------------
SETTINGS = [
    {"loss": "cosent"},
    {"loss": "mnrl"},
    {"loss": "mnrl", "symmetric": True},
    {"loss": "cosent", "matryoshka_dims": "384,128"},
    {"loss": "mnrl", "matryoshka_dims": "256,64"},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_a_batch_is_scored_whole_as_sentence_transformers_scores_it(st_minilm, stsb, minilm_dir, tmp_path, settings):
    """The loop's batch, under a token budget far too small for it, is one batch; the task's loss on it
    (minilm-l6 here, the real one in sentence-transformers) is the library's on the same texts."""
    rows = distinct(stsb["train"], 32)
    if settings["loss"] == "cosent":
        path = write_csv(tmp_path / "d.csv", ["sentence1", "sentence2", "score"], rows[:16])
    else:  # triplets: negatives from other rows, so that no text repeats
        triplets = [(a, p, n) for (a, p, _), (_, n, _) in zip(rows[:16], rows[16:], strict=True)]
        path = write_csv(tmp_path / "d.csv", ["anchor", "positive", "negative"], triplets)
    md = ModelDir.open(minilm_dir)
    task = embed_task(md.tokenizer, **settings)
    examples = task.read(path, labelled=True)
    task.fit_labels(examples, path)
    model = task.load_model(md).eval()
    task.set_data(examples, examples[:4])
    args = TrainArgs(out=tmp_path / "run", batch_size=16)
    (batch,) = _micro_batches(task, Schedule(16, 16, 1, 0, Dist()), 0, args, Dist(), max_tokens=64)
    order = Schedule(16, 16, 1, 0, Dist()).micro_batch(0, 0)[2]
    with torch.no_grad():
        got = task.losses(model, batch)["loss"]
        columns = [[examples[i].texts[c] for i in order] for c in range(len(examples[0].texts))]
        if settings["loss"] == "cosent":
            inner = CoSENTLoss(st_minilm)
        else:
            inner = st_mnrl(st_minilm, settings.get("symmetric", False))
        loss = MatryoshkaLoss(st_minilm, inner, task.settings.dims()) if "matryoshka_dims" in settings else inner
        labels = torch.tensor([examples[i].score or 0.0 for i in order])
        expected = loss([st_minilm.preprocess(c) for c in columns], labels)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


DUPLICATED = [("a0", "p0", "n0"), ("a1", "p0", "n1"), ("a2", "p2", "n2"), ("a3", "p3", "n2"), ("a4", "p4", "p0")]


def unique_batch_term(vectors: dict, i: int, query: int, target: int, pool: list[int]) -> torch.Tensor:
    """Example i's cross-entropy in a batch without duplicates: its column ``query`` over the distinct
    texts in columns ``pool`` of itself and of the examples that share no text with it."""
    meets = [j for j, r in enumerate(DUPLICATED) if j == i or not set(r) & set(DUPLICATED[i])]
    seen = list(dict.fromkeys(DUPLICATED[j][c] for c in pool for j in meets))
    logits = 20 * torch.stack([vectors[DUPLICATED[i][query]] @ vectors[t] for t in seen])
    return torch.logsumexp(logits, 0) - logits[seen.index(DUPLICATED[i][target])]


@pytest.mark.parametrize("symmetric", [False, True], ids=["mnrl", "symmetric"])
def test_a_text_met_twice_is_encoded_once_and_the_batch_scored_as_if_it_held_no_duplicates(
    tiny_dir, tmp_path, symmetric
):
    """Examples 0 and 1 share a positive, 2 and 3 a negative, 4's negative is 0's positive."""
    path = write_csv(tmp_path / "t.csv", ["anchor", "positive", "negative"], DUPLICATED)
    md = ModelDir.open(tiny_dir)
    task = embed_task(md.tokenizer, symmetric=symmetric)
    examples = task.read(path, labelled=True)
    task.fit_labels(examples, path)
    task.set_data(examples, [])
    model = task.load_model(md).eval()
    batch = task.collate(list(range(5)))
    texts = list(dict.fromkeys(t for r in DUPLICATED for t in r))
    assert batch["input_ids"].shape[0] == len(texts) == 12
    assert torch.equal(batch["columns"], torch.tensor([[texts.index(t) for t in r] for r in DUPLICATED]).T)
    with torch.no_grad():
        got = task.losses(model, batch)["loss"]
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        vectors = dict(zip(texts, F.normalize(model(**inputs), dim=-1), strict=True))
    terms = [unique_batch_term(vectors, i, 0, 1, [1, 2]) for i in range(5)]
    if symmetric:
        terms = [(t + unique_batch_term(vectors, i, 1, 0, [0])) / 2 for i, t in enumerate(terms)]
    torch.testing.assert_close(got, torch.stack(terms).mean(), atol=1e-5, rtol=0)


# -- the end-to-end run on STS-B -------------------------------------------------------------------------------------
def mean_loss(task, model_dir: Path, path: Path) -> float:
    """The task's CoSENT loss over ``path``'s rows, in batches of 16 in file order, the model in eval mode."""
    examples = task.read(path, labelled=True)
    task.fit_labels(examples, path)
    model = task.load_model(ModelDir.open(model_dir)).eval()
    task.set_data(examples, [])
    with torch.no_grad():
        return float(np.mean([task.losses(model, task.collate(list(range(i, i + 16))))["loss"] for i in (0, 16, 32)]))


def test_finetune_embed_on_stsb(stsb, minilm_dir, st_minilm, tmp_path):
    """`bertforge finetune embed` on STS-B rows with minilm-l6: the training loss falls, and the directory
    loads in SentenceTransformer with the embeddings `bertforge embed` gives, and scores as its evaluator."""
    train = write_csv(tmp_path / "train.csv", ["sentence1", "sentence2", "score"], stsb["train"][:48])
    valid = write_csv(tmp_path / "valid.csv", ["sentence1", "sentence2", "score"], stsb["valid"][:48])
    test_rows = stsb["test"][:120]
    test = write_csv(tmp_path / "test.csv", ["sentence1", "sentence2", "score"], test_rows)
    out = tmp_path / "model"
    flags = ["--epochs", "3", "--batch-size", "16", "--lr", "1e-4", "--eval-every", "3", "--patience", "0"]
    run_all(["finetune", "embed", "--model", "minilm-l6", "--train", train, "--valid", valid, "--out", out, *flags])

    tok = ModelDir.open(minilm_dir).tokenizer
    last = out / "run" / "checkpoints" / "step-9"  # (OUT is the best by validation Spearman)
    assert mean_loss(embed_task(tok), last, train) < mean_loss(embed_task(tok), minilm_dir, train) - 0.1
    saved = json.loads((out / "config.json").read_text())["bertforge"]
    assert saved["task"] == "embed" and saved["extra"]["loss"] == "cosent" and saved["max_length"] == 128
    assert json.loads((out / "valid_metrics.json").read_text())["spearman"] > 0.5
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 128

    texts = sorted({t for r in test_rows[:40] for t in r[:2]})
    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(texts) + "\n", encoding="utf-8")
    run_all(["embed", "--model", out, "--input", lines, "--output", tmp_path / "e.npy"])
    trained = SentenceTransformer(str(out), device="cpu")
    reference = trained.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), reference, atol=1e-5, rtol=0)
    assert not np.allclose(reference, st_minilm.encode(texts, convert_to_numpy=True), atol=1e-3)  # it trained

    ours = evaluate_file(out, test)
    theirs = EmbeddingSimilarityEvaluator(*map(list, zip(*test_rows, strict=True)), write_csv=False)(trained)
    assert ours.keys() == {"spearman", "pearson"}
    assert abs(ours["spearman"] - theirs["spearman_cosine"]) < 1e-5
    assert abs(ours["pearson"] - theirs["pearson_cosine"]) < 1e-5

    md = ModelDir.open(out)  # an encoder to every face: embed, similarity, summarize
    assert [t.endpoint for t in served(md)] == ["embed", "similarity", "summarize", "embeddings", "tokenize"]
    pair = list(test_rows[0][:2])
    similarity = for_model(md, "similarity").predict(Embedder.from_pretrained(md), [tuple(pair)])[0]
    a, b = trained.encode(pair, convert_to_tensor=True)
    assert abs(float(similarity) - float(F.cosine_similarity(a, b, dim=0))) < 1e-5


# -- Dense steps train, and a run resumes exactly -------------------------------------------------------------------
def pairs_file(path: Path, n: int) -> Path:
    words = "cat dog bird fish horse cow sheep goat duck frog".split()
    rows = [(f"the {words[i % 10]} number {i}", f"a {words[i % 10]} called {i}") for i in range(n)]
    return write_csv(path, ["anchor", "positive"], rows)


def test_dense_trains_and_a_resumed_run_ends_where_the_straight_one_does(tiny_dir, tmp_path):
    torch.manual_seed(0)
    transformer = Transformer(str(tiny_dir))
    h = transformer.get_embedding_dimension()
    base = tmp_path / "base"
    SentenceTransformer(modules=[transformer, Pooling(h), Dense(h, 16, activation_function=torch.nn.Tanh())]).save(
        str(base)
    )
    train = pairs_file(tmp_path / "pairs.csv", 64)
    spec = TaskSpec("embed", max_length=32, extra={"symmetric": True, "matryoshka_dims": "16,8"})

    def run(out: Path, resume: bool = False) -> dict:
        args = TrainArgs(out=out, max_steps=4, batch_size=16, lr=1e-3, save_every=2, eval_every=4, progress=False)
        args.resume = resume
        return finetune("embed", base, train, out.parent, spec=TaskSpec.from_dict(spec.to_dict()), args=args)

    straight = run(tmp_path / "straight" / "run")
    assert set(straight) >= {"recall_at_1", "mrr"}
    step4 = tmp_path / "straight" / "run" / "checkpoints" / "step-4"
    dense = load_file(step4 / "2_Dense" / "model.safetensors")["linear.weight"]
    assert not torch.equal(dense, load_file(base / "2_Dense" / "model.safetensors")["linear.weight"])
    texts = ["the cat number 3", "a dog called 11", "fish"]
    np.testing.assert_allclose(
        Embedder.from_pretrained(tmp_path / "straight")(texts),
        SentenceTransformer(str(tmp_path / "straight"), device="cpu").encode(texts),
        atol=1e-5,
    )

    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "run" / "checkpoints" / "step-4")
    run(tmp_path / "resumed" / "run", resume=True)
    again = tmp_path / "resumed" / "run" / "checkpoints" / "step-4"
    for name in ("model.safetensors", "2_Dense/model.safetensors"):
        a, b = load_file(step4 / name), load_file(again / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# -- the user's mistakes: one line each ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header, rows, settings, message",
    [
        (["text", "label"], [("a", "b")], {}, "no text columns: expected anchor,positive[,negative] or sentence1,"),
        (["anchor", "positive"], [("a", "b"), ("c", " ")], {}, "line 3: empty 'positive'"),
        (["sentence1", "sentence2", "score"], [("a", "b", "high")], {}, "line 2: 'score' is 'high', not a number"),
        (["q", "d"], [("a", "b")], {"columns": "q,doc"}, "no column 'doc' (columns: q, d)"),
    ],
)
def test_bad_files_are_one_line_errors_naming_file_and_line(tiny_dir, tmp_path, header, rows, settings, message):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    task = embed_task(ModelDir.open(tiny_dir).tokenizer, **settings)
    with pytest.raises(BertforgeError) as e:
        task.read(path, labelled=True)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "header, rows, settings, message",
    [
        (
            ["anchor", "positive"],
            [("a", "b"), ("c", "d")],
            {"loss": "cosent"},
            "cosent learns from pairs with a 'score'",
        ),
        (["sentence1", "sentence2", "score"], [("a", "b", "1"), ("c", "d", "")], {}, "line 3: empty 'score'"),
        (["sentence1", "sentence2", "score"], [("a", "b", "1"), ("c", "d", "1")], {}, "every 'score' is the same"),
        (
            ["sentence1", "sentence2", "score"],
            [("a", "b", "1")],
            {"loss": "mnrl"},
            "mnrl learns from (anchor, positive)",
        ),
    ],
)
def test_data_the_loss_cannot_learn_from_is_an_error(tiny_dir, tmp_path, header, rows, settings, message):
    path = write_csv(tmp_path / "d.csv", header, rows)
    task = embed_task(ModelDir.open(tiny_dir).tokenizer, **settings)
    with pytest.raises(BertforgeError) as e:
        task.fit_labels(task.read(path, labelled=True), path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"loss": "triplet"}, "unknown embed loss 'triplet' (choose from mnrl, cosent)"),
        ({"scale": 0}, "embed: scale must be a positive number, not 0"),
        (
            {"matryoshka_dims": "384,x"},
            "embed: matryoshka dims are positive whole numbers, e.g. 384,256,128,64, not '384,x'",
        ),
        ({"loss": "cosent", "symmetric": True}, "embed: --symmetric is for the mnrl loss, not cosent"),
        ({"columns": "a"}, "embed: --columns names 2 or 3 different columns, not 'a'"),
    ],
)
def test_bad_settings_are_one_line_errors(tiny_dir, settings, message):
    with pytest.raises(BertforgeError) as e:
        embed_task(ModelDir.open(tiny_dir).tokenizer, **settings)
    assert str(e.value) == message


def test_matryoshka_dims_wider_than_the_embedding_are_an_error(tiny_dir):
    md = ModelDir.open(tiny_dir)
    with pytest.raises(
        BertforgeError, match=rf"^embed: matryoshka dim 4096 is wider than the {md.config.hidden_size}-"
    ):
        embed_task(md.tokenizer, matryoshka_dims="4096,64").load_model(md)
