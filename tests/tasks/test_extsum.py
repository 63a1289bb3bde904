"""Extractive summarisation: BertSum inputs, the greedy oracle, selection, training-free modes, ROUGE,
and a tiny fine-tune on aclsum papers through the command line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

import bertforge
from bertforge import metrics
from bertforge.assets import fetch
from bertforge.cli import app
from bertforge.config import BertConfig
from bertforge.errors import BertforgeError
from bertforge.heads import BertWithHead
from bertforge.summary import (
    Document,
    cluster_select,
    greedy_oracle,
    join,
    lead,
    read_documents,
    score_summaries,
    select,
    summarize_untrained,
)
from bertforge.tasks import TaskSpec
from bertforge.tasks.extsum import ExtSumTask

SOLAR = [
    "The Sun is the star at the centre of the Solar System.",
    "Jupiter is the largest planet in the Solar System.",
    "Mars is the fourth planet from the Sun.",
    "Boil the pasta for ten minutes in salted water.",
    "Saturn is a gas giant with spectacular rings of ice.",
]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return bertforge.Tokenizer.from_pretrained(minilm_dir)


def extsum_task(tokenizer, max_length: int = 512, **extra) -> ExtSumTask:
    return ExtSumTask(TaskSpec("extsum", max_length=max_length, extra=extra), tokenizer)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# -- BertSum inputs -----------------------------------------------------------------------------------
def test_every_sentence_has_its_cls_and_interval_segments(tokenizer):
    t = extsum_task(tokenizer)
    [packed] = t.pack([Document(["A b.", "C d e.", "F."], None, None, 1)])
    [w] = packed.windows
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    a, b, c, d, e, f, dot = (tokenizer.token_to_id(x) for x in ("a", "b", "c", "d", "e", "f", "."))
    assert w.ids == [cls, a, b, dot, sep, cls, c, d, e, dot, sep, cls, f, dot, sep]
    assert w.cls == [0, 5, 11]
    assert w.type_ids == [0] * 5 + [1] * 6 + [0] * 4


def test_long_documents_are_windows_of_whole_sentences(tokenizer):
    t = extsum_task(tokenizer, max_length=12)
    long = "word " * 100
    [packed] = t.pack([Document(["A b.", "C d e.", "F.", long, "G."], None, None, 1)])
    assert [w.cls for w in packed.windows] == [[0, 5], [0], [0], [0]]
    assert [len(w.ids) for w in packed.windows] == [11, 4, 12, 4]  # the long sentence keeps 10 tokens
    assert packed.windows[1].type_ids == [0] * 4  # segments restart with each window
    assert all(w.ids[c] == tokenizer.cls_id for w in packed.windows for c in w.cls)


def test_the_head_scores_sentences_across_windows_of_a_batch(tokenizer):
    t = extsum_task(tokenizer, max_length=12)
    docs = [Document(["A b.", "C d e.", "F."], [0, 1, 0], None, 1), Document(["G h."], [1], None, 2)]
    t.train_features = t.features(docs, train=True)
    batch = t.collate([0, 1])
    T = batch["input_ids"].size(1)
    assert batch["input_ids"].shape == (3, 11)  # windows: doc 0 -> 2, doc 1 -> 1
    assert batch["sentence_index"].tolist() == [[0, 5, T], [2 * T, 0, 0]]
    assert batch["sentence_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["labels"].tolist() == [[0, 1, 0], [1, 0, 0]]
    assert t.counts(batch) == {"loss": 4}
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        extra={"extsum_inter_layers": 2},
    )
    torch.manual_seed(0)
    model = BertWithHead(config, "extsum")
    out = model(**batch)
    assert out.logits.shape == (2, 3)
    mask = batch["sentence_mask"]
    want = torch.nn.functional.binary_cross_entropy_with_logits(out.logits[mask], batch["labels"][mask])
    assert out.loss.item() == pytest.approx(want.item())
    out.loss.backward()
    qkv = model.head.inter.layers[0].qkv.weight
    assert qkv.grad is not None and qkv.grad.abs().sum() > 0


def test_the_saved_model_loads_here_and_its_encoder_in_transformers(tokenizer, tmp_path):
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        extra={"extsum_inter_layers": 2},
    )
    torch.manual_seed(0)
    model = BertWithHead(config, "extsum").eval()
    bertforge.save_pretrained(model, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["BertForExtractiveSummarization"] and saved["extsum_inter_layers"] == 2
    again, again_report = bertforge.load_with_report(tmp_path, head="extsum")
    assert again_report.initialised == [] and again_report.unused == []
    ids = torch.tensor([[tokenizer.cls_id, 2000, 2001, tokenizer.sep_id, tokenizer.cls_id, 2002, tokenizer.sep_id]])
    kwargs = {"sentence_index": torch.tensor([[0, 4]]), "sentence_mask": torch.tensor([[True, True]])}
    with torch.no_grad():
        torch.testing.assert_close(again(ids, **kwargs).logits, model(ids, **kwargs).logits)
        hf = transformers.AutoModel.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(hf(ids).last_hidden_state, model.bert(ids).last_hidden_state, atol=1e-5, rtol=1e-5)


# -- labels and selection -----------------------------------------------------------------------------
def test_greedy_oracle_by_hand():
    sentences = ["the cat sat on the mat", "dogs bark loudly", "the cat ate fish", "birds fly"]
    summary = "the cat sat on the mat and ate fish"
    # alone: sentence 0 scores R1 F 0.800 + R2 F 0.769, sentence 2 0.615 + 0.364; with 0 chosen, adding 2
    # gives R1 F 0.842 + R2 F 0.750 = 1.592 > 1.569; adding 1 or 3 after that only lowers precision: stop
    assert greedy_oracle(sentences, summary, 3) == [0, 2]
    assert greedy_oracle(sentences, summary, 1) == [0]
    assert greedy_oracle(sentences, "nothing in common", 3) == []


def test_trigram_blocking_and_document_order():
    sentences = ["the model is good", "the model is good indeed", "a different claim here", "and one more"]
    assert select(sentences, [3, 2, 1, 0], top_k=2) == [0, 2]
    assert select(sentences, [3, 2, 1, 0], top_k=2, trigram_blocking=False) == [0, 1]
    assert select(sentences, [1, 5, 3, 4], top_k=3, trigram_blocking=False) == [1, 2, 3]  # order kept, not [1, 3, 2]


def test_length_budget_in_words():
    sentences = ["one two three four five", "six seven", "eight nine ten eleven", "twelve"]
    # best first: 0 (5 words), then 2 would make 9 > 8, 1 makes 7, 3 makes 8
    assert select(sentences, [4, 3, 3.5, 1], top_k=None, max_words=8) == [0, 1, 3]
    assert select(sentences, [4, 3, 3.5, 1], top_k=None, max_words=2) == [0]  # the best always goes in
    assert select(["北京是中国的首都。", "上海很大。"], [2, 1], top_k=None, max_words=11) == [0]  # 8 + 4 characters
    assert select(["北京是中国的首都。", "上海很大。"], [2, 1], top_k=None, max_words=12) == [0, 1]


def test_a_summary_joins_chinese_sentences_without_spaces():
    assert join(["今天天气很好。", "好的"]) == "今天天气很好。好的" and join(["A b.", "C d."]) == "A b. C d."


def test_rouge_uses_characters_for_chinese_and_stems_english():
    # 7 reference characters, 4 predicted, all 4 match: P 1, R 4/7; bigrams 3 of 6
    r = metrics.rouge(["我爱北京天安门"], ["我爱北京"])
    assert (r["rouge1_f1"], r["rouge2_f1"], r["rougeL_f1"]) == (
        pytest.approx(800 / 11),
        pytest.approx(200 / 3),
        pytest.approx(800 / 11),
    )
    # cats -> cat, running/runs -> run: 2 of 2 predicted tokens in 4 reference tokens
    assert metrics.rouge(["The cats are running"], ["cat runs"])["rouge1_f1"] == pytest.approx(200 / 3)
    assert metrics.selection_prf([[1, 0, 1, 0], [0, 1]], [[0, 1], [1]]) == {
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
    }


# -- training-free --------------------------------------------------------------------------------------
class FixedEmbedder:
    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors

    def __call__(self, texts, progress=False):
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def test_centroid_cluster_and_lead_on_fixed_vectors():
    vectors = {"s0": [1, 0], "s1": [0.9, 0.1], "s2": [0, 1], "s3": [0.8, 0.2]}
    doc = Document(list(vectors), None, None, 1)
    # centroid of the unit vectors ~ (0.910, 0.415): cosines s0 0.910, s1 0.950, s2 0.415, s3 0.984
    [got] = summarize_untrained(FixedEmbedder(vectors), [doc], "centroid", top_k=2)
    assert got["selected"] == [1, 3] and got["summary"] == "s1 s3"
    assert got["scores"] == pytest.approx([0.910, 0.950, 0.415, 0.984], abs=1e-3)
    clusters = np.array([[1, 0], [0.95, 0.05], [0, 1], [0.1, 0.9], [0.9, 0.1], [0.02, 0.98]])
    assert cluster_select(clusters, 2) == [1, 5]  # the member nearest each centre: (0.95, 0.05), (0.04, 0.96)
    [first] = summarize_untrained(None, [doc], "lead", top_k=3)
    assert first == {"summary": "s0 s1 s2", "selected": [0, 1, 2]}
    assert lead(["only"], 3) == [0]
    # a length budget applies to lead and cluster too: sentences in document order while they fit
    words_doc = Document(["one two three", "four five", "six seven eight nine", "ten"], None, None, 1)
    assert summarize_untrained(None, [words_doc], "lead", top_k=None, max_words=6)[0]["selected"] == [0, 1, 3]
    assert summarize_untrained(None, [words_doc], "lead", top_k=2, max_words=6)[0]["selected"] == [0, 1]
    assert summarize_untrained(None, [words_doc], "lead", top_k=None, max_words=1)[0]["selected"] == [0]
    vecs = {"one two three": [1, 0], "four five": [0.9, 0.1], "six seven eight nine": [0, 1], "ten": [0.1, 0.9]}
    by_cluster = summarize_untrained(FixedEmbedder(vecs), [words_doc], "cluster", top_k=2)[0]["selected"]
    assert len(by_cluster) == 2
    budget = summarize_untrained(FixedEmbedder(vecs), [words_doc], "cluster", top_k=2, max_words=3)[0]["selected"]
    assert budget == by_cluster[:1]


def test_training_free_summaries_with_minilm(minilm_dir):
    pipe = bertforge.pipeline("summarize", minilm_dir, top_k=3)
    got = pipe({"sentences": SOLAR})
    assert 3 not in got["selected"] and len(got["selected"]) == 3  # the pasta sentence is off-topic
    assert got["summary"] == join([SOLAR[i] for i in got["selected"]])
    lead3 = bertforge.pipeline("summarize", minilm_dir, method="lead")(" ".join(SOLAR))
    assert lead3["selected"] == [0, 1, 2]
    with pytest.raises(BertforgeError, match="^extsum: give --top-k or --max-words$"):  # 0: no limit on the count
        bertforge.pipeline("summarize", minilm_dir, top_k=0)
    assert (
        len(bertforge.pipeline("summarize", minilm_dir, top_k=0, max_words=12)({"sentences": SOLAR})["selected"]) == 1
    )


def test_summarize_command_scores_against_references(minilm_dir, tmp_path):
    path = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"sentences": SOLAR, "labels": [1, 1, 0, 0, 0], "summary": SOLAR[0] + " " + SOLAR[1]},
        ],
    )
    result = CliRunner().invoke(
        app,
        [
            "summarize",
            "--model",
            str(minilm_dir),
            "--input",
            str(path),
            "--output",
            str(tmp_path / "s.jsonl"),
            "--method",
            "lead",
            "--top-k",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert (
        row["selected"] == [0, 1] and row["summary"] == SOLAR[0] + " " + SOLAR[1] and row["labels"] == [1, 1, 0, 0, 0]
    )
    lines = dict(line.split() for line in result.stdout.splitlines() if line.startswith(("rouge", "f1", "precision")))
    assert lines == {
        "rouge1": "100.0000",
        "rouge2": "100.0000",
        "rougeL": "100.0000",
        "precision": "1.0000",
        "f1": "1.0000",
    }


# -- bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"title": "no text"}, "needs 'sentences' (a list) or 'text' (a string)"),
        ({"sentences": "One. Two."}, "'sentences' must be a list of strings, 'text' a string"),
        ({"sentences": ["One.", 2]}, "sentence 1 is int, not text"),
        ({"sentences": ["One.", " "]}, "sentence 1 is empty"),
        ({"sentences": []}, "the document is empty"),
        ({"text": "  "}, "the document is empty"),
        ({"sentences": ["One.", "Two."], "labels": [1]}, "'labels' has 1 values for 2 sentences"),
        ({"text": "One. Two. Three.", "labels": [1, 0]}, "'labels' has 2 values for 3 sentences (split from the text)"),
        ({"sentences": ["One."], "labels": [2]}, "'labels' must be a list of 0/1 per sentence"),
        ({"sentences": ["One."], "summary": ["One."]}, "'summary' is list, not text"),
    ],
)
def test_bad_records_are_one_line_errors(tmp_path, record, message):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"sentences": ["Fine."], "labels": [1]}, record])
    with pytest.raises(BertforgeError) as e:
        read_documents(path)
    assert str(e.value) == f"{path}: line 2: {message}"


def test_training_needs_labels_or_a_summary(tokenizer, tmp_path):
    t = extsum_task(tokenizer)
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"sentences": ["One.", "Two."], "labels": [0, 1]}, {"text": "Three. Four."}]
    )
    with pytest.raises(BertforgeError, match=r"line 2: needs 'labels' or 'summary' to learn from$"):
        t.fit_labels(t.read(path), path)
    with pytest.raises(BertforgeError) as e:
        t.read(path, labelled=True)  # as finetune and evaluate read
    assert str(e.value) == f"{path}: line 2: needs 'labels' or 'summary'"
    path = write_jsonl(tmp_path / "t.jsonl", [{"sentences": ["One.", "Two."], "labels": [0, 0]}])
    with pytest.raises(BertforgeError, match="no sentence is labelled as in the summary: nothing to learn"):
        t.fit_labels(t.read(path), path)


def test_summary_only_documents_get_oracle_labels_and_empty_ones_are_left_out(tokenizer, caplog):
    t = extsum_task(tokenizer, oracle_k=1)
    docs = [Document(["the cat sat on the mat", "dogs bark"], None, "a cat sat on a mat", 1), Document([], [], None, 2)]
    with caplog.at_level(logging.WARNING, logger="bertforge"):
        feats = t.features(docs, train=True)
    assert [f.labels for f in feats] == [[1, 0]]
    assert [r.getMessage() for r in caplog.records] == ["1 documents without sentences left out of training"]


# -- a tiny fine-tune on aclsum --------------------------------------------------------------------------
def aclsum_records(parts: tuple[str, ...], limit: int | None = None) -> list[dict]:
    """aclsum's training papers (these parts of each), labelled with the 'approach' highlights."""
    rows = [json.loads(line) for line in (fetch("aclsum", quiet=True) / "train.jsonl").read_text().splitlines()][:limit]
    return [
        {
            "id": r["id"],
            "sentences": [s for p in parts for s in r["sentences"][p]],
            "labels": [y for p in parts for y in r["highlights"]["approach"][p]],
            "summary": r["summary"]["approach"],
        }
        for r in rows
    ]


@pytest.fixture(scope="module")
def aclsum_files(tmp_path_factory) -> tuple[Path, Path]:
    """Six aclsum papers, abstract and conclusion only."""
    records = aclsum_records(("abstract", "conclusion"), 6)
    root = tmp_path_factory.mktemp("aclsum")
    return write_jsonl(root / "train.jsonl", records[:4]), write_jsonl(root / "valid.jsonl", records[4:])


MEMORY_BOUND_GB = 4.0  # stated in the README: a default extsum run on aclsum fits an ordinary machine


def test_a_default_run_on_whole_aclsum_papers_stays_under_the_memory_bound(tmp_path):
    """Batches of 32 whole papers (about 1,000 words, several 512-token windows each) run under the
    token budget; without it one step needed more than 24 GB."""
    train = write_jsonl(tmp_path / "train.jsonl", aclsum_records(("abstract", "introduction", "conclusion")))
    cmd = [
        sys.executable,
        "-m",
        "bertforge",
        "finetune",
        "extsum",
        "--model",
        "minilm-l6",
        "--train",
        str(train),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
    ]
    measure = (
        "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", measure, *cmd], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_gb = int(proc.stdout.split()[-1]) / 2**20  # ru_maxrss is in KiB
    assert "best validation (step 1)" in proc.stdout and (tmp_path / "run" / "config.json").is_file()
    assert peak_gb < MEMORY_BOUND_GB, f"peak resident memory {peak_gb:.1f} GB"


@pytest.fixture(scope="module")
def extsum_model(aclsum_files, tmp_path_factory) -> Path:
    train, valid = aclsum_files
    out = tmp_path_factory.mktemp("extsum") / "model"
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "extsum",
            "--model",
            "minilm-l6",
            "--train",
            str(train),
            "--valid",
            str(valid),
            "--out",
            str(out),
            "--max-length",
            "256",
            "--max-steps",
            "4",
            "--batch-size",
            "2",
            "--lr",
            "1e-4",
            "--eval-every",
            "4",
            "--patience",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best validation (step 4): rouge1" in result.output
    return out


def test_fine_tuned_summarizer_predicts_and_evaluates(extsum_model, aclsum_files, tmp_path):
    _, valid = aclsum_files
    config = json.loads((extsum_model / "config.json").read_text())
    assert (
        config["architectures"] == ["BertForExtractiveSummarization"] and config["extsum_inter_layers"] == 2
    )  # the default
    assert config["bertforge"]["task"] == "extsum" and config["bertforge"]["max_length"] == 256
    assert config["bertforge"]["extra"]["top_k"] == 3

    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(extsum_model),
            "--input",
            str(valid),
            "--output",
            str(tmp_path / "p.jsonl"),
            "--top-k",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    for row in rows:
        assert len(row["selected"]) == 2 and row["selected"] == sorted(row["selected"])
        assert row["summary"] == " ".join(row["sentences"][i] for i in row["selected"])
        assert len(row["scores"]) == len(row["sentences"])
        top = sorted(range(len(row["scores"])), key=lambda i: -row["scores"][i])
        assert top[0] in row["selected"]  # the best-scored sentence is always in

    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(extsum_model), "--data", str(valid), "--output", str(tmp_path / "m.json")]
    )
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "m.json").read_text())
    docs = read_documents(valid)
    preds = bertforge.pipeline("summarize", extsum_model)([{"sentences": d.sentences} for d in docs])
    assert scores == pytest.approx(score_summaries(preds, docs))
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "precision", "recall", "f1"}
    assert all(0 <= v <= 100 for v in scores.values())
    # `summarize` runs the untrained methods: on a trained summariser it points at predict, not past the scorer
    result = CliRunner().invoke(
        app, ["summarize", "--model", str(extsum_model), "--input", str(valid), "--output", str(tmp_path / "s.jsonl")]
    )
    assert isinstance(result.exception, BertforgeError) and "is a fine-tuned summariser" in str(result.exception)
    assert "bertforge predict --model" in str(result.exception) and not (tmp_path / "s.jsonl").exists()


def test_fine_tuned_summarizer_handles_awkward_documents(extsum_model):
    pipe = bertforge.pipeline("summarize", extsum_model)
    single, huge = pipe(["Only one sentence here.", {"sentences": ["word " * 600, "Short one."]}])
    with pytest.raises(BertforgeError, match="^input: the document is empty$"):  # as the files' and the server's
        pipe({"sentences": []})
    assert single["selected"] == [0] and single["summary"] == "Only one sentence here."
    assert sorted(huge["selected"]) == [0, 1] and len(huge["scores"]) == 2
    with pytest.raises(BertforgeError, match="input: needs 'sentences'"):
        pipe({"title": "nothing"})
    with pytest.raises(BertforgeError, match="is a extsum model, not qa"):
        bertforge.pipeline("qa", extsum_model)
