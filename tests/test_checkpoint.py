"""Checkpoints in and out: round trips with transformers, other file layouts, and every bad input."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import bertforge
from bertforge import BertforgeError, Tokenizer

TOL = dict(atol=1e-5, rtol=1e-5)

POOLER = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}

# our head -> (transformers auto class, the class it must resolve to)
AUTO = {
    None: ("AutoModel", "BertModel"),
    "pretrain": ("AutoModelForPreTraining", "BertForPreTraining"),
    "mlm": ("AutoModelForMaskedLM", "BertForMaskedLM"),
    "classify": ("AutoModelForSequenceClassification", "BertForSequenceClassification"),
    "tag": ("AutoModelForTokenClassification", "BertForTokenClassification"),
    "span": ("AutoModelForQuestionAnswering", "BertForQuestionAnswering"),
    "choice": ("AutoModelForMultipleChoice", "BertForMultipleChoice"),
}


def _outputs(model, batch, hf: bool) -> list[torch.Tensor]:
    """The tensors a model of either library returns, in one order."""
    with torch.no_grad():
        out = model(**batch)
    if isinstance(out, bertforge.EncoderOutput):
        return [out.last_hidden_state, out.pooler_output]
    if not hf:
        return [t for t in (out.logits, out.nsp_logits, out.end_logits) if t is not None]
    if hasattr(out, "prediction_logits"):
        return [out.prediction_logits, out.seq_relationship_logits]
    if hasattr(out, "start_logits"):
        return [out.start_logits, out.end_logits]
    if hasattr(out, "last_hidden_state"):
        return [out.last_hidden_state, out.pooler_output]
    return [out.logits]


def _batch(make_batch, head, seed=0):
    if head == "choice":
        flat = make_batch([9, 4, 7, 9, 2, 5], seed=seed)
        return {k: v.view(2, 3, -1) for k, v in flat.items()}
    return make_batch([11, 6, 2], seed=seed)


@pytest.mark.parametrize("head", list(AUTO))
def test_our_save_loads_in_transformers_with_identical_outputs(our_model, make_batch, tmp_path, head):
    # QA fine-tuning has no labels to give: id2label={} must still save a config transformers reads as 2 outputs
    labels = (
        {"id2label": {0: "neg", 1: "pos", 2: "mixed"}}
        if head in ("classify", "tag")
        else {"id2label": {}}
        if head == "span"
        else {}
    )
    ours = our_model(head, seed=1, **labels)
    (ours if head is None else ours.bert).unpad = False  # compare padding positions too
    bertforge.save_pretrained(ours, tmp_path)
    auto, expected = AUTO[head]
    theirs, info = getattr(transformers, auto).from_pretrained(tmp_path, output_loading_info=True)
    theirs.eval()
    assert type(theirs).__name__ == expected
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert set(info["unexpected_keys"]) <= POOLER  # kept where transformers' class has none: later uses read it
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [expected]
    if labels.get("id2label"):
        assert theirs.config.id2label == labels["id2label"]
    batch = _batch(make_batch, head, seed=2)
    for a, b in zip(_outputs(ours, batch, hf=False), _outputs(theirs, batch, hf=True), strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("head", list(AUTO))
def test_transformers_save_our_load_our_save_is_bit_exact(hf_model, tmp_path, head):
    theirs = hf_model(AUTO[head][1], seed=3, **({"num_labels": 3} if head in ("classify", "tag") else {}))
    theirs.save_pretrained(tmp_path / "hf")
    ours = bertforge.load_pretrained(tmp_path / "hf", head=head)
    bertforge.save_pretrained(ours, tmp_path / "ours")
    before = load_file(tmp_path / "hf" / "model.safetensors")
    after = load_file(tmp_path / "ours" / "model.safetensors")
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    assert set(after) - set(before) <= POOLER  # the pooler we keep even where transformers has none


def test_save_with_tokenizer_files_loads_in_auto_tokenizer(our_model, tiny_vocab, tiny_corpus, tmp_path):
    tok = Tokenizer.from_pretrained(tiny_vocab)
    model = our_model(vocab_size=tok.vocab_size, max_position_embeddings=128)
    bertforge.save_pretrained(model, tmp_path, tokenizer=tok)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }  # and no temporary files left behind
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    lines = tiny_corpus.read_text().splitlines()
    enc = theirs(lines[:12], lines[12:24])
    ours = tok.encode_batch(lines[:12], lines[12:24])
    assert enc["input_ids"] == [e.ids for e in ours]
    assert enc["token_type_ids"] == [e.type_ids for e in ours]
    reloaded = Tokenizer.from_pretrained(tmp_path)
    assert [e.ids for e in reloaded.encode_batch(lines)] == [e.ids for e in tok.encode_batch(lines)]
    assert reloaded.lowercase is True
    # and the model itself, through AutoModel
    hf = transformers.AutoModel.from_pretrained(tmp_path).eval()
    batch = tok.to_tensors(ours)
    with torch.no_grad():
        a, b = model(**batch), hf(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], **TOL)


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=oct)
def test_saved_files_get_the_umask_permissions(our_model, tiny_vocab, tmp_path, umask):
    """Like every other file written: a server running as another user can read the model."""
    from bertforge.outputs import current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask  # read without setting it (from /proc on Linux)
        bertforge.save_pretrained(our_model("classify"), tmp_path, tokenizer=Tokenizer.from_pretrained(tiny_vocab))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["config.json"] == modes["model.safetensors"] == modes["vocab.txt"] == 0o666 & ~umask


def _same(ours, theirs, make_batch):
    batch = make_batch([10, 4, 7], seed=9)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], **TOL)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, **TOL)


def test_pytorch_model_bin_loads_with_weights_only(hf_model, make_batch, tmp_path):
    theirs = hf_model(seed=4)
    theirs.config.save_pretrained(tmp_path)
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")
    ours, ours_report = bertforge.load_with_report(tmp_path)
    assert ours_report.initialised == [] and ours_report.unused == []
    _same(ours, theirs, make_batch)


def test_old_gamma_beta_layernorm_names_load(hf_model, make_batch, tmp_path):
    theirs = hf_model("BertForPreTraining", seed=5)
    theirs.config.save_pretrained(tmp_path)
    state = {}
    for k, v in theirs.state_dict().items():
        if "LayerNorm." in k:
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[k] = v.clone()
    assert sum(k.endswith(".gamma") for k in state) == 2 * 2 + 2  # two per layer, embeddings, MLM transform
    save_file(state, tmp_path / "model.safetensors")
    ours, ours_report = bertforge.load_with_report(tmp_path)
    assert ours_report.initialised == []
    assert all(k.startswith("cls.") for k in ours_report.unused)
    _same(ours, theirs.bert, make_batch)
    with_head, with_head_report = bertforge.load_with_report(tmp_path, head="pretrain")
    assert with_head_report.initialised == [] and with_head_report.unused == []
    torch.testing.assert_close(with_head.head.mlm.norm.weight, theirs.cls.predictions.transform.LayerNorm.weight)


def test_sharded_safetensors_load(hf_model, make_batch, tmp_path):
    theirs = hf_model(seed=6)
    theirs.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    _same(bertforge.load_pretrained(tmp_path), theirs, make_batch)


def test_loaded_models_are_in_eval_mode_on_the_device(hf_model, tmp_path):
    hf_model(seed=7).save_pretrained(tmp_path)
    model = bertforge.load_pretrained(tmp_path, device="cpu")
    assert not model.training
    assert not hasattr(model, "source") and not hasattr(model, "load_report")  # loaders return what they report
    assert next(model.parameters()).device.type == "cpu"


# -- load report ------------------------------------------------------------------------------------
def test_absent_head_weights_are_reported_initialised(hf_model, tmp_path, caplog):
    hf_model(seed=8).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="bertforge"):
        model, model_report = bertforge.load_with_report(tmp_path, head="span")
    assert model_report.initialised == ["head.qa.weight", "head.qa.bias"]
    assert model_report.unused == []
    assert "freshly initialised (not in checkpoint): head.qa.weight, head.qa.bias" in caplog.text
    mlm, mlm_report = bertforge.load_with_report(tmp_path, head="mlm")
    assert set(mlm_report.initialised) == {
        "head.mlm.transform.weight",
        "head.mlm.transform.bias",
        "head.mlm.norm.weight",
        "head.mlm.norm.bias",
        "head.mlm.decoder.bias",
    }


def test_unused_checkpoint_weights_are_reported(hf_model, tmp_path, caplog):
    hf_model("BertForPreTraining", seed=9).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="bertforge"):
        encoder, encoder_report = bertforge.load_with_report(tmp_path)
    assert encoder_report.initialised == []
    assert encoder_report.unused == [
        "cls.predictions.bias",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.dense.weight",
        "cls.seq_relationship.bias",
        "cls.seq_relationship.weight",
    ]
    assert "checkpoint weights not used: cls.predictions.bias" in caplog.text
    classifier, classifier_report = bertforge.load_with_report(tmp_path, head="classify", num_labels=4)
    assert classifier_report.initialised == ["head.classifier.weight", "head.classifier.bias"]
    assert "cls.seq_relationship.weight" in classifier_report.unused
    assert classifier.head.classifier.weight.shape == (4, 32)


def test_a_task_checkpoint_reads_as_an_encoder(hf_model, make_batch, tmp_path):
    theirs = hf_model("BertForSequenceClassification", seed=10, num_labels=2)
    theirs.save_pretrained(tmp_path)
    encoder, encoder_report = bertforge.load_with_report(tmp_path)
    assert encoder_report.unused == ["classifier.bias", "classifier.weight"]
    _same(encoder, theirs.bert, make_batch)


# -- bad input --------------------------------------------------------------------------------------
@pytest.fixture
def saved(hf_model, tmp_path) -> Path:
    hf_model(seed=11).save_pretrained(tmp_path)
    return tmp_path


def _error(path, **kwargs) -> str:
    with pytest.raises(BertforgeError) as e:
        bertforge.load_pretrained(path, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_truncated_safetensors_names_the_file(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert _error(saved).startswith(f"{weights}: not a readable checkpoint")


@pytest.mark.parametrize("content", [b'{"weights": [1, 2, 3]}\n', b"\x00" * 7, bytes(range(256)) * 8])
def test_wrong_format_safetensors_names_the_file(saved, content):
    weights = saved / "model.safetensors"
    weights.write_bytes(content)
    assert _error(saved).startswith(f"{weights}: not a readable checkpoint")


class _RunsCode:
    """A pickle that would create a file if it were ever unpickled with code execution."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_needs_code_is_refused_without_running_it(hf_model, tmp_path):
    hf_model(seed=12).config.save_pretrained(tmp_path)
    marker = tmp_path / "code-ran"
    torch.save({"embeddings.word_embeddings.weight": _RunsCode(marker)}, tmp_path / "pytorch_model.bin")
    message = _error(tmp_path)
    assert (
        message == f"{tmp_path / 'pytorch_model.bin'}: not a readable checkpoint (not a PyTorch file of tensors alone)"
    )
    assert not marker.exists() and "weights_only" not in message  # (torch's own advice: load it with code allowed)


def test_pickle_of_something_else_than_a_state_dict(hf_model, tmp_path):
    hf_model(seed=12).config.save_pretrained(tmp_path)
    torch.save([torch.zeros(2)], tmp_path / "pytorch_model.bin")
    assert _error(tmp_path) == f"{tmp_path / 'pytorch_model.bin'}: not a state dict of tensors"


def test_missing_encoder_weight_names_the_key(saved):
    weights = saved / "model.safetensors"
    state = load_file(weights)
    del state["encoder.layer.1.attention.self.key.weight"]
    save_file(state, weights)
    assert _error(saved) == f"{saved}: missing encoder weight 'encoder.layer.1.attention.self.key.weight'"
    # under a head the key gains its "bert." prefix
    assert "missing encoder weight 'bert.encoder.layer.1.attention.self.key.weight'" in _error(saved, head="classify")


def test_shape_mismatch_names_the_key(saved):
    config = json.loads((saved / "config.json").read_text())
    config["vocab_size"] = 301
    (saved / "config.json").write_text(json.dumps(config))
    assert _error(saved) == (
        f"{saved}: shape mismatch for embeddings.word_embeddings.weight: checkpoint (300, 32), model (301, 32)"
    )


def test_shape_mismatch_in_a_fused_weight_names_its_parts(saved):
    weights = saved / "model.safetensors"
    state = load_file(weights)
    state["encoder.layer.0.attention.self.value.bias"] = torch.zeros(31)
    save_file(state, weights)
    message = _error(saved)
    assert (
        "shape mismatch for encoder.layer.0.attention.self.query.bias+encoder.layer.0.attention.self.key.bias"
        in message
    )
    assert "checkpoint (95,), model (96,)" in message


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json at all", "not a valid JSON config"),
        ('{"model_type": "modernbert"}', "model_type 'modernbert' is not supported"),
    ],
)
def test_bad_config_json_names_the_file(saved, content, message):
    (saved / "config.json").write_text(content)
    text = _error(saved)
    assert text.startswith(f"{saved / 'config.json'}: ") and message in text


def test_directory_without_weights_or_config(saved, tmp_path):
    (saved / "model.safetensors").unlink()
    assert _error(saved) == f"{saved}: no model.safetensors or pytorch_model.bin found"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(empty) == f"{empty}: not a model directory (no config.json)"


def test_unknown_name_and_unknown_head(saved):
    assert _error("no-such-model-anywhere").startswith(
        "no-such-model-anywhere: no such file or directory, and not a registry name"
    )
    assert _error(saved, head="ner").startswith("unknown head 'ner'")


def test_many_fresh_weights_are_named_by_module(caplog):
    from bertforge.checkpoint import _names

    assert _names(["head.qa.weight", "head.qa.bias"]) == "head.qa.weight, head.qa.bias"
    many = [f"head.inter.layers.{i}.w" for i in range(24)] + ["head.scorer.weight", "head.scorer.bias"]
    assert _names(many) == "head.inter.* (24 tensors), head.scorer.* (2 tensors)"
