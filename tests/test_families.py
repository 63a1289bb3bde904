"""The BERT family against transformers: RoBERTa, XLM-R, DistilBERT, ELECTRA and ALBERT checkpoints
built and saved by transformers on tiny random configs, loaded here with every head the family has:
outputs (padding and pairs in the batch, dense and unpadded, sdpa and math), losses and gradients
equal; and our saves load back in transformers' Auto classes with no key missing or unexpected."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import perturb

import bertforge
from bertforge import BertforgeError
from bertforge.checkpoint import key_table
from bertforge.families import FAMILIES as KNOWN
from bertforge.heads import HeadOutput

TOL = dict(atol=1e-5, rtol=1e-5)
SHAPE = dict(vocab_size=99, max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
BERTLIKE = dict(SHAPE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
# name -> (transformers class prefix, config class, config fields)
FAMILIES = {
    "roberta": ("Roberta", "RobertaConfig", dict(BERTLIKE, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)),
    "xlm-roberta": ("XLMRoberta", "XLMRobertaConfig", dict(BERTLIKE, type_vocab_size=1, pad_token_id=1)),
    "distilbert": (
        "DistilBert",
        "DistilBertConfig",
        dict(
            SHAPE,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=37,
            dropout=0.0,
            attention_dropout=0.0,
            seq_classif_dropout=0.0,
            qa_dropout=0.0,
        ),
    ),  # fmt: skip
    "electra": ("Electra", "ElectraConfig", dict(BERTLIKE, embedding_size=16, summary_last_dropout=0.0)),
    "electra-square": (
        "Electra",
        "ElectraConfig",
        dict(BERTLIKE, embedding_size=32, hidden_act="gelu_new", summary_last_dropout=0.0),
    ),
    "albert": (
        "Albert",
        "AlbertConfig",
        dict(BERTLIKE, embedding_size=16, num_hidden_layers=3, classifier_dropout_prob=0.0),
    ),
    "albert-groups": (
        "Albert",
        "AlbertConfig",
        dict(
            BERTLIKE,
            embedding_size=16,
            num_hidden_layers=4,
            num_hidden_groups=2,
            inner_group_num=2,
            classifier_dropout_prob=0.0,
        ),
    ),  # fmt: skip
}
# our head -> transformers class suffix
CLASSES = {
    None: "Model",
    "mlm": "ForMaskedLM",
    "classify": "ForSequenceClassification",
    "tag": "ForTokenClassification",
    "span": "ForQuestionAnswering",
    "choice": "ForMultipleChoice",
    "pretrain": "ForPreTraining",
    "discriminator": "ForPreTraining",
}
AUTO = {
    None: "AutoModel",
    "mlm": "AutoModelForMaskedLM",
    "classify": "AutoModelForSequenceClassification",
    "tag": "AutoModelForTokenClassification",
    "span": "AutoModelForQuestionAnswering",
    "choice": "AutoModelForMultipleChoice",
    "pretrain": "AutoModelForPreTraining",
    "discriminator": "AutoModelForPreTraining",
}


def _heads(family: str) -> list[str | None]:
    model_type = "albert" if family.startswith("albert") else "electra" if family.startswith("electra") else family
    return [None, *KNOWN[model_type].heads.keys() - {"extsum"}]


CASES = [(f, h) for f in FAMILIES for h in sorted(_heads(f), key=str)]


def _theirs(family: str, head: str | None, seed: int = 0) -> torch.nn.Module:
    prefix, config_class, fields = FAMILIES[family]
    config = getattr(transformers, config_class)(**fields, num_labels=3 if head in ("classify", "tag") else 2)
    torch.manual_seed(seed)
    return perturb(getattr(transformers, prefix + CLASSES[head])(config), seed).eval()


def _batch(model: torch.nn.Module, head: str | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded sequences (real lengths 11, 6, 2; choice: 2 x 3) in the family's padding id, with
    segment ids 0/1 where the family has two segments, and the targets of the head."""
    config = model.config
    pad = config.pad_token_id
    g = torch.Generator().manual_seed(seed)
    lengths = [9, 4, 7, 9, 2, 5] if head == "choice" else [11, 6, 2]
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, config.vocab_size, (n,), generator=g)
        mask[i, :n] = 1
        types[i, n // 2 : n] = int(getattr(config, "type_vocab_size", 0) > 1)  # a pair: second half segment B
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if head == "choice":
        batch = {k: v.view(2, 3, T) for k, v in batch.items()}
    return batch


def _targets(head: str | None, batch: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    B, T = ids.shape[:2]
    if head in ("classify", "choice"):
        return {"labels": torch.randint(0, 3 if head == "classify" else ids.size(1), (B,), generator=g)}
    if head == "tag":
        return {"labels": torch.randint(0, 3, (B, T), generator=g).masked_fill(mask == 0, -100)}
    if head == "span":
        return {"start_positions": torch.tensor([1, 4, 0]), "end_positions": torch.tensor([3, 5, 1])}
    if head == "discriminator":
        return {"labels": torch.randint(0, 2, (B, T), generator=g)}
    if head in ("mlm", "pretrain"):
        labels = torch.where(torch.rand(B, T, generator=g) < 0.3, ids, torch.full_like(ids, -100))
        labels[0, 1] = ids[0, 1]  # at least one
        out = {"labels": labels.masked_fill(mask == 0, -100)}
        if head == "pretrain":
            out["sentence_order_label" if family.startswith("albert") else "next_sentence_label"] = torch.tensor(
                [0, 1, 1]
            )
        return out
    return {}


def _hf_inputs(theirs: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "token_type_ids" or "DistilBert" not in type(theirs).__name__}


def _outputs(out) -> list[torch.Tensor]:
    """The tensors either library returns, in one order."""
    if isinstance(out, bertforge.EncoderOutput):
        return [t for t in (out.last_hidden_state, out.pooler_output) if t is not None]
    if isinstance(out, HeadOutput):
        return [t for t in (out.logits, out.nsp_logits, out.end_logits) if t is not None]
    for names in (("prediction_logits", "seq_relationship_logits"), ("prediction_logits", "sop_logits"),
                  ("start_logits", "end_logits"), ("last_hidden_state", "pooler_output")):  # fmt: skip
        if all(getattr(out, n, None) is not None for n in names):
            return [getattr(out, n) for n in names]
        if names[0] == "last_hidden_state" and hasattr(out, names[0]):
            return [out.last_hidden_state]  # an encoder without a pooler
    return [out.logits]


def _ours_name(head: str | None) -> str:
    return {"sentence_order_label": "next_sentence_label"}.get(head, head)


@pytest.fixture
def saved(tmp_path):
    def make(family: str, head: str | None, seed: int = 0):
        theirs = _theirs(family, head, seed)
        theirs.save_pretrained(tmp_path / "hf")
        return theirs, tmp_path / "hf"

    return make


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "dense"])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
@pytest.mark.parametrize("family, head", CASES, ids=[f"{f}-{h}" for f, h in CASES])
def test_outputs_equal_transformers(saved, family, head, attention, unpad):
    theirs, path = saved(family, head)
    ours = bertforge.load_pretrained(path, head, attention=attention, unpad=unpad)
    (ours if head is None else ours.bert).unpad_above = 0.0  # unpad whenever there is padding
    batch = _batch(theirs, head)
    with torch.no_grad():
        expected = _outputs(theirs(**_hf_inputs(theirs, batch)))
        got = _outputs(ours(**batch))
    assert len(got) == len(expected)
    real = batch["attention_mask"].bool()
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        if a.dim() >= 2 and a.shape[:2] == real.shape:  # token outputs: padding positions hold zeros unpadded
            a, b = a[real], b[real]
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("family, head", [c for c in CASES if c[1] is not None], ids=lambda c: str(c))
def test_losses_and_gradients_equal_transformers(saved, family, head):
    theirs, path = saved(family, head, seed=1)
    theirs.train()  # (every dropout is 0: the two runs are the same function)
    # transformers' span loss takes its softmax over padding positions too, whose logits the unpadded
    # encoder leaves at the bias: equal only when both compute padding alike
    ours = bertforge.load_pretrained(path, head, unpad=head != "span").train()
    batch = _batch(theirs, head)
    targets = _targets(head, {k: v.view(-1, v.size(-1)) if head == "choice" else v for k, v in batch.items()}, family)
    if head == "choice":
        targets = {"labels": torch.tensor([2, 0])}
    loss_theirs = theirs(**_hf_inputs(theirs, batch), **targets).loss
    ours_targets = {_ours_name(k): v for k, v in targets.items()}
    loss_ours = ours(**batch, **ours_targets).loss
    torch.testing.assert_close(loss_ours, loss_theirs, **TOL)
    loss_theirs.backward()
    loss_ours.backward()
    params_ours, params_theirs = dict(ours.named_parameters()), dict(theirs.named_parameters())
    compared = 0
    for name, hf_names in key_table(ours.config, head):
        if name not in params_ours or not all(h in params_theirs for h in hf_names):
            continue
        grad = params_ours[name].grad
        expected = (
            torch.cat([params_theirs[h].grad for h in hf_names])
            if len(hf_names) > 1
            else params_theirs[hf_names[0]].grad
        )
        if expected is None:
            assert grad is None or not grad.any(), name
            continue
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4, msg=name)
        compared += 1
    assert compared >= 10


@pytest.mark.parametrize("family, head", CASES, ids=[f"{f}-{h}" for f, h in CASES])
def test_our_save_loads_in_transformers_auto_classes(saved, tmp_path, family, head):
    theirs, path = saved(family, head, seed=2)
    ours = bertforge.load_pretrained(path, head)
    bertforge.save_pretrained(ours, tmp_path / "ours")
    back, info = getattr(transformers, AUTO[head]).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert type(back).__name__ == type(theirs).__name__
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == theirs.config.model_type
    batch = _batch(theirs, head, seed=3)
    with torch.no_grad():
        for a, b in zip(
            _outputs(back.eval()(**_hf_inputs(back, batch))), _outputs(theirs(**_hf_inputs(theirs, batch))), strict=True
        ):
            torch.testing.assert_close(a, b, **TOL)
    again = bertforge.load_pretrained(tmp_path / "ours", head)  # and back here: the same model
    assert again.config.to_dict() == ours.config.to_dict()


def test_distilbert_config_keeps_its_own_names(saved, tmp_path):
    _, path = saved("distilbert", None)
    config = bertforge.BertConfig.from_json(path / "config.json")
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.type_vocab_size) == (
        32,
        2,
        37,
        0,
    )
    config.save(tmp_path / "config.json")
    written = json.loads((tmp_path / "config.json").read_text())
    assert {"dim", "n_layers", "n_heads", "hidden_dim", "activation"} <= written.keys()
    assert not {"hidden_size", "num_hidden_layers", "type_vocab_size", "layer_norm_eps"} & written.keys()


def test_albert_shares_its_layers():
    config = bertforge.BertConfig(**dict(BERTLIKE, model_type="albert", embedding_size=16, num_hidden_layers=6,
                                         num_hidden_groups=2))  # fmt: skip
    model = bertforge.BertModel(config)
    assert len(model.layers) == 2 and model.order == [0, 0, 0, 1, 1, 1]
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in bertforge.BertModel(config.replace(model_type="bert", embedding_size=None)).parameters()
    )


def test_roberta_positions_leave_room_for_the_padding_offset():
    config = bertforge.BertConfig(**dict(BERTLIKE, model_type="roberta", type_vocab_size=1, pad_token_id=1))
    assert config.max_length == 40 - 2
    with pytest.raises(BertforgeError, match="longer than the model's 38 positions"):
        bertforge.BertModel(config)(torch.full((1, 39), 5))


@pytest.mark.parametrize(
    "family, head, message",
    [
        ("roberta", "pretrain", "roberta has no pretrain head"),
        ("bert", "discriminator", "bert has no discriminator head"),
    ],
)
def test_a_head_the_family_lacks_is_one_line(family, head, message):
    config = bertforge.BertConfig(**dict(BERTLIKE, model_type=family))
    with pytest.raises(BertforgeError, match=message):
        bertforge.BertWithHead(config, head)


@pytest.mark.parametrize("model_type", ["deberta-v2", "modernbert", "mpnet"])
def test_unsupported_model_types_list_the_supported(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(BertforgeError, match=f"config.json: model_type '{model_type}' is not supported .*roberta"):
        bertforge.BertConfig.from_json(tmp_path / "config.json")
