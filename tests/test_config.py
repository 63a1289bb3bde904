"""BertConfig: size presets, Hugging Face config.json in and out, and the errors of a bad config."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from bertforge import BertConfig, BertforgeError, BertModel
from bertforge.config import COMPACT_HIDDEN, COMPACT_LAYERS, preset_names

NAMED = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(NAMED))
def test_named_presets_have_published_shapes(name):
    layers, hidden = NAMED[name]
    c = BertConfig.preset(name)
    assert (c.num_hidden_layers, c.hidden_size) == (layers, hidden)
    assert c.num_attention_heads == hidden // 64 and c.head_size == 64
    assert c.intermediate_size == 4 * hidden
    assert (c.vocab_size, c.max_position_embeddings, c.type_vocab_size) == (30522, 512, 2)


@pytest.mark.parametrize("name", ["tiny", "mini", "small", "medium", "base", "large"])
def test_preset_models_have_as_many_weights_as_transformers(name):
    c = BertConfig.preset(name)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ours = BertModel(c)
        theirs = transformers.BertModel(transformers.BertConfig(**c.to_dict()))
    assert _params(ours) == _params(theirs)
    layer = ours.layers[0]
    H = c.hidden_size
    assert len(ours.layers) == c.num_hidden_layers
    assert layer.attn.qkv.weight.shape == (3 * H, H)
    assert layer.ffn.up.weight.shape == (4 * H, H) and layer.ffn.down.weight.shape == (H, 4 * H)
    assert ours.embeddings.word.weight.shape == (30522, H)


def test_base_and_large_counts_are_the_published_ones():
    with torch.device("meta"):
        assert _params(BertModel(BertConfig.preset("base"))) == 109_482_240  # bert-base-uncased, "110M"
        assert _params(BertModel(BertConfig.preset("large"))) == 335_141_888  # bert-large-uncased, "340M"


def test_compact_presets_cover_the_turc_grid():
    names = preset_names()
    for layers in COMPACT_LAYERS:
        for hidden in COMPACT_HIDDEN:
            c = BertConfig.preset(f"L{layers}-H{hidden}")
            assert f"L{layers}-H{hidden}" in names
            assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
                layers,
                hidden,
                hidden // 64,
                4 * hidden,
            )
    assert len(names) == 6 + len(COMPACT_LAYERS) * len(COMPACT_HIDDEN)


def test_preset_overrides_apply():
    c = BertConfig.preset("tiny", vocab_size=1000, max_position_embeddings=128)
    assert (c.vocab_size, c.max_position_embeddings, c.hidden_size) == (1000, 128, 128)


@pytest.mark.parametrize("name", ["huge", "L3-H128", "L2-H100", "l2-h128", ""])
def test_unknown_preset_is_an_error_naming_it(name):
    with pytest.raises(BertforgeError, match=f"unknown preset '{name}'"):
        BertConfig.preset(name)


def test_bad_shapes_and_activations_are_errors():
    with pytest.raises(BertforgeError, match="hidden_size 100 is not divisible by num_attention_heads 12"):
        BertConfig(hidden_size=100)
    with pytest.raises(BertforgeError, match="hidden_act 'tanh' is not supported"):
        BertConfig(hidden_act="tanh")


# -- config.json ------------------------------------------------------------------------------------
HF_STYLE = {
    "_name_or_path": "nreimers/MiniLM-L6-H384-uncased",
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 384,
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 6,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "transformers_version": "4.8.2",
    "type_vocab_size": 2,
    "use_cache": True,
    "vocab_size": 30522,
    "custom_nested": {"a": [1, 2, 3], "b": None},
}


def test_config_json_round_trip_keeps_unknown_fields(tmp_path):
    (tmp_path / "in.json").write_text(json.dumps(HF_STYLE))
    c = BertConfig.from_json(tmp_path / "in.json")
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.architectures) == (384, 6, 1536, ["BertModel"])
    unknown = ("_name_or_path", "gradient_checkpointing", "transformers_version", "use_cache", "custom_nested")
    assert {k: c.extra[k] for k in unknown} == {
        "_name_or_path": "nreimers/MiniLM-L6-H384-uncased",
        "gradient_checkpointing": False,
        "transformers_version": "4.8.2",
        "use_cache": True,
        "custom_nested": {"a": [1, 2, 3], "b": None},
    }
    c.save(tmp_path / "out.json")
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == HF_STYLE
    assert BertConfig.from_json(tmp_path / "out.json") == c


def test_labels_round_trip_with_integer_keys(tmp_path):
    c = BertConfig.preset(
        "tiny", id2label={0: "negative", 1: "positive", 2: "neutral"}, problem_type="single_label_classification"
    )
    c.save(tmp_path / "config.json")
    out = json.loads((tmp_path / "config.json").read_text())
    assert out["id2label"] == {"0": "negative", "1": "positive", "2": "neutral"}
    assert out["label2id"] == {"negative": 0, "positive": 1, "neutral": 2}
    back = BertConfig.from_json(tmp_path / "config.json")
    assert back.id2label == {0: "negative", 1: "positive", 2: "neutral"}
    assert back.num_labels == 3 and back.label2id["neutral"] == 2
    assert back.problem_type == "single_label_classification"
    assert "label2id" not in back.extra


def test_num_labels_alone_gives_generic_labels():
    c = BertConfig.from_dict({"num_labels": 4})
    assert c.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2", 3: "LABEL_3"}
    assert BertConfig().num_labels == 2


def test_transformers_reads_our_config(tmp_path):
    ours = BertConfig.preset("mini", vocab_size=1234, hidden_act="gelu_new", id2label={0: "no", 1: "yes"})
    ours.extra["my_field"] = "kept"
    ours.save(tmp_path / "config.json")
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(theirs, transformers.BertConfig)
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
    ):
        assert getattr(theirs, name) == getattr(ours, name), name
    assert theirs.id2label == {0: "no", 1: "yes"} and theirs.label2id == {"no": 0, "yes": 1}
    assert theirs.my_field == "kept"


def test_we_read_transformers_config(tmp_path):
    theirs = transformers.BertConfig(
        vocab_size=777,
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=200,
        hidden_act="silu",
        type_vocab_size=4,
        layer_norm_eps=1e-6,
        num_labels=5,
    )
    theirs.save_pretrained(tmp_path)
    ours = BertConfig.from_json(tmp_path / "config.json")
    assert (ours.vocab_size, ours.hidden_size, ours.num_hidden_layers, ours.num_attention_heads) == (777, 96, 3, 3)
    assert (ours.intermediate_size, ours.hidden_act, ours.type_vocab_size, ours.layer_norm_eps) == (
        200,
        "silu",
        4,
        1e-6,
    )
    assert ours.num_labels == 5 and ours.id2label[4] == "LABEL_4"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a valid JSON config"),
        ("[1, 2]", "top level is not an object"),
        (b"\xff\xfe\x00garbage", "not a valid JSON config"),
        ('{"model_type": "deberta-v2"}', "model_type 'deberta-v2' is not supported (supported: bert, roberta"),
        ('{"position_embedding_type": "relative_key"}', "position_embedding_type 'relative_key' is not supported"),
        ('{"is_decoder": true}', "decoder / cross-attention BERT configs are not supported"),
        ('{"hidden_act": "mish"}', "hidden_act 'mish' is not supported"),
        ('{"hidden_size": 100}', "hidden_size 100 is not divisible"),
        ('{"vocab_size": 10, "hidden_size": 10, "num_attention_heads": 3}', "not divisible"),
        # hand-edited values: each error names its field
        ('{"hidden_size": "abc"}', "hidden_size is 'abc', not an integer"),
        ('{"num_attention_heads": true}', "num_attention_heads is True, not an integer"),
        ('{"layer_norm_eps": "tiny"}', "layer_norm_eps is 'tiny', not a number"),
        ('{"architectures": "BertModel"}', "architectures is 'BertModel', not a list or null"),
        ('{"num_labels": "two"}', "num_labels is 'two', not an integer"),
        ('{"id2label": ["fresh", "rotten"]}', "id2label is ['fresh', 'rotten'], not an object or null"),
        ('{"id2label": {"zero": "fresh"}}', "id2label has ids that are not integers (zero)"),
        ('{"id2label": {"0": "fresh", "5": "rotten"}}', "id2label lacks id 1: its 2 ids must run 0 to 1"),
        (
            '{"id2label": {"0": "fresh", "1": "fresh"}}',
            "id2label names 'fresh' twice: each id needs a label of its own",
        ),
    ],
)
def test_bad_config_json_names_the_file(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BertforgeError) as e:
        BertConfig.from_json(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and message in text
    assert "\n" not in text


def test_missing_config_json_names_the_file(tmp_path):
    with pytest.raises(BertforgeError, match=f"{tmp_path / 'config.json'}: no such file"):
        BertConfig.from_json(tmp_path / "config.json")
