"""Every head against the matching transformers class: same weights, same logits, same loss.

Each test builds a random transformers model, saves it, loads it with ``load_pretrained(..., head=...)``
and runs both on the same padded batch. With ``unpad=False`` every position must match; with the
default unpadded encoder, token-level logits match at real tokens (padding holds zeros there).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bertforge
from bertforge import BertforgeError

TOL = dict(atol=1e-5, rtol=1e-5)
LENGTHS = [14, 9, 3, 14]
V = 300  # the tiny config's vocabulary


def _load(theirs, tmp_path, head, unpad, **kwargs):
    theirs.save_pretrained(tmp_path)
    ours, ours_report = bertforge.load_with_report(tmp_path, head=head, unpad=unpad, **kwargs)
    assert not [k for k in ours_report.initialised if k.startswith("head.")]
    assert ours_report.unused == []
    return ours


def _mlm_labels(batch, seed, every=4):
    """Every ``every``-th real token is a target (a random id), everything else -100."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, batch["input_ids"].shape, generator=g)
    keep = batch["attention_mask"].bool() & (torch.rand(labels.shape, generator=g) < 1 / every)
    keep[0, 1] = True  # at least one target
    return labels.masked_fill(~keep, -100)


def _tokens(a, b, mask, unpad):
    """Compare token-level outputs: everywhere on the dense path, at real tokens when unpadded."""
    if unpad:
        real = mask.bool()
        torch.testing.assert_close(a[real], b[real], **TOL)
    else:
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("unpad", [True, False])
def test_pretraining_head_matches_bert_for_pretraining(hf_model, make_batch, tmp_path, unpad):
    theirs = hf_model("BertForPreTraining", seed=1)
    ours = _load(theirs, tmp_path, "pretrain", unpad)
    batch = make_batch(LENGTHS, seed=2)
    labels = _mlm_labels(batch, seed=3)
    nsp = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        a = ours(**batch, labels=labels, next_sentence_label=nsp)
        b = theirs(**batch, labels=labels, next_sentence_label=nsp)
        plain = ours(**batch)
    _tokens(a.logits, b.prediction_logits, batch["attention_mask"], unpad)
    torch.testing.assert_close(a.nsp_logits, b.seq_relationship_logits, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    mlm = F.cross_entropy(b.prediction_logits.view(-1, V), labels.view(-1))
    nsp_loss = F.cross_entropy(b.seq_relationship_logits, nsp)
    torch.testing.assert_close(a.mlm_loss, mlm, **TOL)
    torch.testing.assert_close(a.nsp_loss, nsp_loss, **TOL)
    assert plain.loss is None
    assert torch.equal(plain.logits, a.logits) and torch.equal(plain.nsp_logits, a.nsp_logits)


@pytest.mark.parametrize("unpad", [True, False])
def test_pretraining_steps_match_transformers(hf_model, make_batch, tmp_path, unpad):
    """Training, not just the forward pass: on the same batches (dropout off), every gradient, and the
    losses and weights after AdamW steps, are transformers' BertForPreTraining's (the unpadded path,
    the masked-only vocabulary projection and the tied decoder included)."""
    theirs = hf_model("BertForPreTraining", seed=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = _load(theirs, tmp_path, "pretrain", unpad)
    ours.train(), theirs.train()
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01) for m in (ours, theirs)]
    names = dict(ours.named_parameters())
    for step in range(4):
        batch = make_batch([14, 9, 3, 14, 6], seed=20 + step)
        labels = _mlm_labels(batch, seed=30 + step)
        nsp = torch.tensor([0, 1, 1, 0, 1])
        a = ours(**batch, labels=labels, next_sentence_label=nsp, only_masked=True)
        b = theirs(**batch, labels=labels, next_sentence_label=nsp)
        torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)
        for opt in opts:
            opt.zero_grad()
        a.loss.backward(), b.loss.backward()
        if step == 0:  # gradients of the word embeddings (tied to the decoder), a fused qkv, the NSP layer
            hf = dict(theirs.named_parameters())
            torch.testing.assert_close(
                names["bert.embeddings.word.weight"].grad,
                hf["bert.embeddings.word_embeddings.weight"].grad,
                atol=1e-5,
                rtol=1e-4,
            )
            q = hf["bert.encoder.layer.1.attention.self.query.weight"].grad
            torch.testing.assert_close(
                names["bert.layers.1.attn.qkv.weight"].grad[: q.size(0)], q, atol=1e-5, rtol=1e-4
            )
            torch.testing.assert_close(
                names["head.nsp.weight"].grad, hf["cls.seq_relationship.weight"].grad, atol=1e-5, rtol=1e-4
            )
        for opt in opts:
            opt.step()
    torch.testing.assert_close(
        names["bert.layers.0.ffn.up.weight"],
        dict(theirs.named_parameters())["bert.encoder.layer.0.intermediate.dense.weight"],
        atol=1e-5,
        rtol=1e-4,
    )


def test_only_masked_gives_the_same_loss_as_full_logits(hf_model, make_batch, tmp_path):
    ours = _load(hf_model("BertForPreTraining", seed=4), tmp_path, "pretrain", True)
    batch = make_batch(LENGTHS, seed=5)
    labels = _mlm_labels(batch, seed=6)
    nsp = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        full = ours(**batch, labels=labels, next_sentence_label=nsp)
        only = ours(**batch, labels=labels, next_sentence_label=nsp, only_masked=True)
    where = labels != -100
    assert only.logits.shape == (int(where.sum()), V)
    torch.testing.assert_close(only.logits, full.logits[where], **TOL)
    torch.testing.assert_close(only.loss, full.loss, **TOL)
    torch.testing.assert_close(only.mlm_loss, full.mlm_loss, **TOL)


@pytest.mark.parametrize("unpad", [True, False])
def test_mlm_head_matches_bert_for_masked_lm(hf_model, make_batch, tmp_path, unpad):
    theirs = hf_model("BertForMaskedLM", seed=7)
    ours = _load(theirs, tmp_path, "mlm", unpad)
    batch = make_batch(LENGTHS, seed=8)
    labels = _mlm_labels(batch, seed=9)
    with torch.no_grad():
        a = ours(**batch, labels=labels)
        b = theirs(**batch, labels=labels)
    _tokens(a.logits, b.logits, batch["attention_mask"], unpad)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    assert a.nsp_logits is None
    # the decoder is tied to the word embeddings
    assert ours.head.mlm.decoder.weight is ours.bert.embeddings.word.weight


def test_mlm_only_masked_matches_bert_for_masked_lm(hf_model, make_batch, tmp_path):
    theirs = hf_model("BertForMaskedLM", seed=10)
    ours = _load(theirs, tmp_path, "mlm", True)
    batch = make_batch(LENGTHS, seed=11)
    labels = _mlm_labels(batch, seed=12)
    with torch.no_grad():
        a = ours(**batch, labels=labels, only_masked=True)
        b = theirs(**batch, labels=labels)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    torch.testing.assert_close(a.logits, b.logits[labels != -100], **TOL)


CLASSIFY = {
    # problem_type, num_labels, labels
    "single": ("single_label_classification", 3, torch.tensor([0, 2, 1, 2])),
    "multi": (
        "multi_label_classification",
        4,
        torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]]),
    ),
    "regression": ("regression", 1, torch.tensor([0.5, -1.25, 3.0, 0.0])),
    "inferred-single": (None, 3, torch.tensor([2, 2, 0, 1])),  # long labels -> single-label
    "inferred-multi": (None, 2, torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])),  # float labels -> multi-label
    "inferred-regression": (None, 1, torch.tensor([1.0, 2.0, -0.5, 0.25])),  # one output -> regression
}


@pytest.mark.parametrize("unpad", [True, False])
@pytest.mark.parametrize("kind", list(CLASSIFY))
def test_classify_head_matches_bert_for_sequence_classification(hf_model, make_batch, tmp_path, kind, unpad):
    problem_type, num_labels, labels = CLASSIFY[kind]
    theirs = hf_model("BertForSequenceClassification", seed=13, num_labels=num_labels, problem_type=problem_type)
    ours = _load(theirs, tmp_path, "classify", unpad)
    assert ours.config.num_labels == num_labels and ours.config.problem_type == problem_type
    batch = make_batch(LENGTHS, seed=14)
    with torch.no_grad():
        a = ours(**batch, labels=labels)
        b = theirs(**batch, labels=labels)
    assert a.logits.shape == (4, num_labels)
    torch.testing.assert_close(a.logits, b.logits, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)


def test_num_labels_and_problem_type_at_load(hf_model, make_batch, tmp_path):
    hf_model("BertModel", seed=15).save_pretrained(tmp_path)
    ours, ours_report = bertforge.load_with_report(
        tmp_path, head="classify", num_labels=5, problem_type="multi_label_classification"
    )
    assert ours.config.num_labels == 5 and ours.config.problem_type == "multi_label_classification"
    assert ours_report.initialised == ["head.classifier.weight", "head.classifier.bias"]
    named = bertforge.load_pretrained(tmp_path, head="classify", id2label={0: "neg", 1: "pos"})
    assert named.config.id2label == {0: "neg", 1: "pos"}
    with torch.no_grad():
        out = ours(**make_batch([5, 3]), labels=torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]))
    assert out.logits.shape == (2, 5)
    expected = F.binary_cross_entropy_with_logits(out.logits, torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]))
    torch.testing.assert_close(out.loss, expected)


def test_unknown_problem_type_is_an_error(our_model, make_batch):
    model = our_model("classify", problem_type="ranking")
    with pytest.raises(BertforgeError, match="unknown problem_type 'ranking'"):
        model(**make_batch([4, 2]), labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("unpad", [True, False])
def test_tag_head_matches_bert_for_token_classification(hf_model, make_batch, tmp_path, unpad):
    theirs = hf_model("BertForTokenClassification", seed=16, num_labels=5)
    ours = _load(theirs, tmp_path, "tag", unpad)
    batch = make_batch(LENGTHS, seed=17)
    g = torch.Generator().manual_seed(18)
    labels = torch.randint(0, 5, batch["input_ids"].shape, generator=g)
    labels[~batch["attention_mask"].bool()] = -100  # padding
    labels[:, 0] = -100  # [CLS]
    labels[1, 3:5] = -100  # word continuations
    with torch.no_grad():
        a = ours(**batch, labels=labels)
        b = theirs(**batch, labels=labels)
    _tokens(a.logits, b.logits, batch["attention_mask"], unpad)
    torch.testing.assert_close(a.loss, b.loss, **TOL)


SPANS = {
    "inside": (torch.tensor([1, 2, 1, 5]), torch.tensor([3, 2, 2, 9])),
    # past the end is ignored (clamped to T, the ignore index); negative is clamped to 0, as in transformers
    "out-of-range": (torch.tensor([1, 40, 14, -3]), torch.tensor([100, 2, 14, 7])),
}


@pytest.mark.parametrize("spans", list(SPANS))
def test_span_head_matches_bert_for_question_answering(hf_model, make_batch, tmp_path, spans):
    theirs = hf_model("BertForQuestionAnswering", seed=19)
    # unpad=False: the loss normalises over every position, padding included, as transformers does
    ours = _load(theirs, tmp_path, "span", unpad=False)
    batch = make_batch(LENGTHS, seed=20)
    start, end = SPANS[spans]
    with torch.no_grad():
        a = ours(**batch, start_positions=start, end_positions=end)
        b = theirs(**batch, start_positions=start, end_positions=end)
    torch.testing.assert_close(a.logits, b.start_logits, **TOL)
    torch.testing.assert_close(a.end_logits, b.end_logits, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)


def test_span_head_unpadded_matches_at_real_tokens(hf_model, make_batch, tmp_path):
    theirs = hf_model("BertForQuestionAnswering", seed=21)
    ours = _load(theirs, tmp_path, "span", unpad=True)
    batch = make_batch(LENGTHS, seed=22)
    real = batch["attention_mask"].bool()
    full = make_batch([14, 14], seed=23)  # no padding: the loss matches too
    start, end = torch.tensor([2, 30]), torch.tensor([5, 13])
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
        fa = ours(**full, start_positions=start, end_positions=end)
        fb = theirs(**full, start_positions=start, end_positions=end)
        partial = ours(**full, start_positions=start)
    torch.testing.assert_close(a.logits[real], b.start_logits[real], **TOL)
    torch.testing.assert_close(a.end_logits[real], b.end_logits[real], **TOL)
    torch.testing.assert_close(fa.loss, fb.loss, **TOL)
    assert partial.loss is None  # both positions are needed for a loss


@pytest.mark.parametrize("unpad", [True, False])
def test_choice_head_matches_bert_for_multiple_choice(hf_model, make_batch, tmp_path, unpad):
    theirs = hf_model("BertForMultipleChoice", seed=24)
    ours = _load(theirs, tmp_path, "choice", unpad)
    B, C = 3, 4
    flat = make_batch([12, 7, 10, 3, 12, 11, 5, 6, 9, 12, 2, 8], seed=25)
    batch = {k: v.view(B, C, -1) for k, v in flat.items()}  # (B, C, T)
    labels = torch.tensor([3, 0, 2])
    with torch.no_grad():
        a = ours(**batch, labels=labels)
        b = theirs(**batch, labels=labels)
    assert a.logits.shape == (B, C)
    torch.testing.assert_close(a.logits, b.logits, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)


def test_three_dimensional_input_needs_the_choice_head(our_model):
    model = our_model("classify")
    with pytest.raises(BertforgeError, match="the classify head takes \\(batch, length\\) inputs, not 3-D"):
        model(torch.ones(2, 3, 5, dtype=torch.long))


def test_unknown_head_is_an_error():
    with pytest.raises(BertforgeError, match="unknown head 'summarise'"):
        bertforge.BertWithHead(bertforge.BertConfig.preset("tiny"), "summarise")


@pytest.mark.parametrize(
    "head, pooler",
    [("pretrain", True), ("mlm", False), ("classify", True), ("tag", False), ("span", False), ("choice", True)],
)
def test_heads_that_read_tokens_freeze_the_pooler(head, pooler):
    model = bertforge.BertWithHead(
        bertforge.BertConfig(
            **{
                "vocab_size": 50,
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
            }
        ),
        head,
    )
    assert all(p.requires_grad == pooler for p in model.bert.pooler.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if "pooler" not in n)


def test_head_gradients_reach_the_encoder(our_model, make_batch):
    model = our_model("tag", id2label={0: "O", 1: "B-X", 2: "I-X"}).train()
    batch = make_batch([6, 4], seed=1)
    labels = torch.tensor([[0, 1, 2, 1, 0, 2], [2, 2, 1, 0, -100, -100]])
    model(**batch, labels=labels).loss.backward()
    assert model.bert.layers[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.head.classifier.weight.grad.abs().sum() > 0
    assert model.bert.pooler.dense.weight.grad is None
