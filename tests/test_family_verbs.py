"""Every verb on every family, end to end: a tiny random checkpoint of each family, saved by
transformers with a tokenizer of its kind trained here, is fine-tuned for classification here, and
transformers' Auto classes load the result and predict the same; embeddings and the ONNX graph
equal transformers' and torch's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from conftest import BERTFORGE, quick_args, sentiment_rows, write_csv

import bertforge
from bertforge.api import finetune
from bertforge.spec import TaskSpec

# family -> (transformers config class, tokenizer kind, config fields beyond the shape)
FAMILIES = {
    "roberta": ("RobertaConfig", "bpe", dict(type_vocab_size=1, layer_norm_eps=1e-5)),
    "xlm-roberta": ("XLMRobertaConfig", "unigram", dict(type_vocab_size=1)),
    "distilbert": ("DistilBertConfig", "wordpiece", dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128)),
    "electra": ("ElectraConfig", "wordpiece", dict(embedding_size=32)),
    "albert": ("AlbertConfig", "unigram", dict(embedding_size=32, num_hidden_layers=2)),
}
SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
TEXTS = ["a wonderful film", "the plot was awful", "superb actors and lovely music", "boring script"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_dir(request, tmp_path_factory):
    """(family, a directory with a random tiny checkpoint of it and a tokenizer of its kind)."""
    family = request.param
    config_class, kind, fields = FAMILIES[family]
    d = tmp_path_factory.mktemp(family)
    corpus = d / "corpus.txt"
    corpus.write_text("".join(text + "\n" for text, _ in sentiment_rows(2000, 5)), encoding="utf-8")
    tok = bertforge.train_vocab([corpus], 400, kind=kind, show_progress=False)
    specials = dict(pad_token_id=tok.pad_id, bos_token_id=tok.cls_id, eos_token_id=tok.sep_id)
    shape = {} if family == "distilbert" else SHAPE
    config = getattr(transformers, config_class)(
        **{**shape, **fields}, vocab_size=tok.vocab_size, max_position_embeddings=130, **specials
    )
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    return family, d / "model"


def test_finetune_classify_and_transformers_predicts_the_same(family_dir, tmp_path):
    family, model_dir = family_dir
    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(480, 0))
    out = tmp_path / "out"
    finetune("classify", model_dir, train, out, args=quick_args(out / "run", steps=40))
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert hf.config.model_type == family
    tok = transformers.AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        probs = torch.softmax(hf(**tok(TEXTS, padding=True, return_tensors="pt")).logits, -1)
    ours = bertforge.pipeline("classify", out)(TEXTS)
    assert [p["label"] for p in ours] == [hf.config.id2label[i] for i in probs.argmax(-1).tolist()]
    for p, row in zip(ours, probs, strict=True):
        assert p["probabilities"][p["label"]] == pytest.approx(float(row.max()), abs=1e-4)
    served = _served(out, tmp_path, "/v1/classify", {"texts": TEXTS})["predictions"]  # the real server too
    assert [p["label"] for p in served] == [p["label"] for p in ours]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(served, ours, strict=True))


def _served(model: Path, logs: Path, endpoint: str, body: dict) -> dict:
    """``body`` posted to ``endpoint`` of a ``bertforge serve`` of ``model`` on a free loopback port."""
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (logs / "serve.err").open("w") as err:
        proc = subprocess.Popen([str(BERTFORGE), "serve", "--model", str(model), "--port", str(port)], stderr=err)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (logs / "serve.err").read_text()
            try:
                r = httpx.post(f"http://127.0.0.1:{port}{endpoint}", json=body, timeout=60)
                assert r.status_code == 200, r.text
                return r.json()
            except httpx.TransportError:
                time.sleep(0.3)
        raise AssertionError("the server did not answer")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_embeddings_equal_transformers_mean_pooling(family_dir):
    _, model_dir = family_dir
    hf = transformers.AutoModel.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    embedder = bertforge.Embedder.from_pretrained(model_dir)
    got = torch.as_tensor(embedder(TEXTS, pooling="mean", normalize=True))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_onnx_graph_equals_torch(family_dir):
    from bertforge.modeldir import ModelDir
    from bertforge.onnx import export_onnx

    _, model_dir = family_dir
    md = ModelDir.open(model_dir)
    export_onnx(bertforge.load_pretrained(md), md.onnx_path("fp32"), source=model_dir)
    torch_vectors = bertforge.Embedder.from_pretrained(model_dir)(TEXTS, pooling="mean")
    onnx_vectors = bertforge.Embedder.from_pretrained(model_dir, runtime="onnx")(TEXTS, pooling="mean")
    torch.testing.assert_close(torch.as_tensor(onnx_vectors), torch.as_tensor(torch_vectors), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_every_precision_runs_each_family(family_dir, precision):
    _, model_dir = family_dir
    fp32 = torch.as_tensor(bertforge.Embedder.from_pretrained(model_dir)(TEXTS, pooling="mean", normalize=True))
    low = torch.as_tensor(
        bertforge.Embedder.from_pretrained(model_dir, precision=precision)(TEXTS, pooling="mean", normalize=True)
    )
    assert torch.nn.functional.cosine_similarity(low.float(), fp32).min() > 0.98


@pytest.mark.parametrize(
    "family, kind, data, hf_class",
    [
        ("roberta", "bpe", dict(nsp=False, pack=True), "RobertaForMaskedLM"),
        ("albert", "unigram", dict(sop=True), "AlbertForPreTraining"),
        ("distilbert", "wordpiece", dict(nsp=False), "DistilBertForMaskedLM"),
    ],
)
def test_pretrain_a_family_from_raw_text(tmp_path, family, kind, data, hf_class):

    from bertforge.api import pretrain
    from bertforge.data.pretrain import PretrainDataConfig, prepare
    from bertforge.train import TrainArgs

    corpus = Path(__file__).parent / "assets" / "corpus_en.txt"
    tok = bertforge.train_vocab([corpus], 300, kind=kind, show_progress=False)
    tok.save_pretrained(tmp_path / "tok")
    config = PretrainDataConfig(max_seq_len=32, dupe_factor=1, eval_fraction=0.1, **data)
    prepare([corpus], tmp_path / "tok", tmp_path / "shards", config, workers=1, progress=False)
    args = TrainArgs(out=tmp_path / "run", max_steps=3, batch_size=8, progress=False)
    assert pretrain(tmp_path / "shards", tmp_path / "run", args, preset="tiny", family=family)
    final = tmp_path / "run" / "final"
    hf, info = getattr(transformers, hf_class).from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ours = bertforge.load_pretrained(final, "pretrain" if family == "albert" else "mlm")
    batch = tok.to_tensors(tok.encode_batch(["the river begins", "a lighthouse stood on a rocky point"]))
    if family == "distilbert":
        batch.pop("token_type_ids")
    with torch.no_grad():
        expected = hf.eval()(**batch)
        got = ours(**batch)
    logits = expected.prediction_logits if family == "albert" else expected.logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got.logits[real], logits[real], atol=1e-4, rtol=1e-4)


def _tag_rows(n: int) -> list[dict]:
    import random

    rnd, rows = random.Random(0), []
    for _ in range(n):
        name, place = rnd.choice(["Alice", "Bob", "Carol", "Dave"]), rnd.choice(["Paris", "Berlin", "Rome", "Oslo"])
        text = f"{name} flew to {place} on Monday"
        at = text.index(place)
        ents = [{"start": 0, "end": len(name), "label": "PER"}, {"start": at, "end": at + len(place), "label": "LOC"}]
        rows.append({"text": text, "entities": ents})
    return rows


def _qa_rows(n: int) -> list[dict]:
    return [
        {"question": f"Where did {r['text'].split()[0]} fly?", "context": r["text"],
         "answers": {"text": [r["text"][r["entities"][1]["start"]:r["entities"][1]["end"]]],
                     "answer_start": [r["entities"][1]["start"]]}}
        for r in _tag_rows(n)
    ]  # fmt: skip


def _pair_rows(n: int) -> list[dict]:
    rows = _tag_rows(n)
    return [{"text": r["text"], "text_pair": rows[-1 - i]["text"], "label": "same" if r["text"] == rows[-1 - i]["text"]
             else "different"} for i, r in enumerate(rows)]  # fmt: skip


def _regress_rows(n: int) -> list[dict]:
    return [{"text": r["text"], "label": len(r["text"]) / 30} for r in _tag_rows(n)]


@pytest.mark.parametrize(
    "task, rows, auto",
    [
        ("tag", _tag_rows, "AutoModelForTokenClassification"),
        ("qa", _qa_rows, "AutoModelForQuestionAnswering"),
        ("pair", _pair_rows, "AutoModelForSequenceClassification"),
        ("regress", _regress_rows, "AutoModelForSequenceClassification"),
    ],
)
def test_token_level_tasks_on_each_family(family_dir, tmp_path, task, rows, auto):
    import json

    _, model_dir = family_dir
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(200)), encoding="utf-8")
    out = tmp_path / "out"
    spec = TaskSpec(task, max_length=64, extra={"doc_stride": 16, "max_query_length": 16} if task == "qa" else {})
    metrics = finetune(task, model_dir, data, out, spec=spec, args=quick_args(out / "run", steps=30))
    assert metrics  # scored on the validation carved from train
    _, info = getattr(transformers, auto).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    if task in ("pair", "regress"):
        assert len(bertforge.pipeline(task, out)([("Carol flew to Oslo", "Bob flew to Rome")]
                                                 if task == "pair" else ["Carol flew to Oslo"])) == 1  # fmt: skip
    elif task == "tag":  # every entity's text is the text at its character span
        text = "Carol flew to Oslo on Monday"
        for e in bertforge.pipeline("tag", out)(text)["entities"]:
            assert text[e["start"] : e["end"]] == e["text"]
    else:
        context = "Carol flew to Oslo on Monday"
        answer = bertforge.pipeline("qa", out)({"question": "Where did Carol fly?", "context": context})
        assert context[answer["start"] : answer["end"]] == answer["answer"]


def test_a_transformers_classifier_of_any_family_predicts_without_our_settings(family_dir, tmp_path):
    family, model_dir = family_dir
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()
    hf.save_pretrained(tmp_path / "clf")  # as a user's fine-tuned checkpoint: no "bertforge" settings
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    tok.save_pretrained(tmp_path / "clf")
    with torch.no_grad():
        probs = torch.softmax(hf(**tok(TEXTS, padding=True, return_tensors="pt")).logits, -1)
    ours = bertforge.pipeline("classify", tmp_path / "clf")(TEXTS)
    for p, row in zip(ours, probs, strict=True):
        assert p["probabilities"]["LABEL_1"] == pytest.approx(float(row[1]), abs=1e-4)
