"""The BERT family: BERT, RoBERTa/XLM-R, DistilBERT, ELECTRA, ALBERT as switches of one encoder.

Each ``Family`` says how its Hugging Face checkpoints name things (config fields, weight keys, model
classes) and the few ways its model differs from BERT's (positions counted from the padding id, no
pooler, factorised embeddings, classification heads with a dense layer of their own). ``model.py``
and ``heads.py`` read the switches; ``checkpoint.py`` reads the key tables. This module is the only
place where Hugging Face's weight names appear.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import BertforgeError

Keys = list[tuple[str, tuple[str, ...]]]  # (our name, checkpoint names: several are concatenated on dim 0)

_BERT_EMBEDDINGS: Keys = [
    ("embeddings.word.weight", ("embeddings.word_embeddings.weight",)),
    ("embeddings.position.weight", ("embeddings.position_embeddings.weight",)),
    ("embeddings.token_type.weight", ("embeddings.token_type_embeddings.weight",)),
    ("embeddings.norm.{p}", ("embeddings.LayerNorm.{p}",)),
    ("pooler.dense.{p}", ("pooler.dense.{p}",)),
]
_BERT_LAYER: Keys = [  # under "encoder.layer.{i}."
    ("attn.qkv.{p}", ("attention.self.query.{p}", "attention.self.key.{p}", "attention.self.value.{p}")),
    ("attn.out.{p}", ("attention.output.dense.{p}",)),
    ("attn_norm.{p}", ("attention.output.LayerNorm.{p}",)),
    ("ffn.up.{p}", ("intermediate.dense.{p}",)),
    ("ffn.down.{p}", ("output.dense.{p}",)),
    ("ffn_norm.{p}", ("output.LayerNorm.{p}",)),
]


def _mlm(transform: str, norm: str, bias: str) -> Keys:
    """An MLM head: transform (dense), LayerNorm, and the decoder's bias (its weight is tied)."""
    return [
        ("head.mlm.transform.{p}", (transform + ".{p}",)),
        ("head.mlm.norm.{p}", (norm + ".{p}",)),
        ("head.mlm.decoder.bias", (bias,)),
    ]


def _common(classifier: Keys, choice: Keys) -> dict[str, Keys]:
    """The heads every family shares in shape: classification, tagging, spans, choice, extsum."""
    return {
        "classify": classifier,
        "tag": [("head.classifier.{p}", ("classifier.{p}",))],
        "span": [("head.qa.{p}", ("qa_outputs.{p}",))],
        "choice": choice,
        # no Hugging Face class: our own names (transformers' AutoModel still reads the encoder)
        "extsum": [("head.scorer.{p}", ("extsum.scorer.{p}",))],
    }


_PLAIN: Keys = [("head.classifier.{p}", ("classifier.{p}",))]
_DENSE_OUT: Keys = [
    ("head.first.pre.{p}", ("classifier.dense.{p}",)),
    ("head.classifier.{p}", ("classifier.out_proj.{p}",)),
]


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's model_type
    prefix: str  # the encoder's name under a head in transformers (base_model_prefix)
    classes: str  # transformers' class names start so: Bert -> BertModel, BertForMaskedLM ...
    embeddings: Keys  # the encoder outside its layers
    layer: Keys  # one layer, under ``layer_path``
    heads: dict[str, Keys]  # head name -> its keys (relative to the whole model)
    layer_path: str = "encoder.layer.{i}."
    pooled_heads: frozenset = frozenset()  # heads whose transformers class has a pooler (None: the encoder)
    summary: dict[str, str] = field(default_factory=dict)  # head -> activation of its own dense layer on <s>
    positions_from_pad: bool = False  # RoBERTa: position ids count real tokens from pad + 1
    always_project: bool = False  # ALBERT maps E -> H even when they are equal
    mlm_act: str | None = None  # the MLM transform's activation (None: config.hidden_act)
    config_names: dict[str, str] = field(default_factory=dict)  # config.json name -> ours
    defaults: dict[str, Any] = field(default_factory=dict)  # transformers' defaults where ours differ
    preset: dict[str, Any] = field(default_factory=dict)  # what a new model of a preset size takes from the family
    omit: tuple[str, ...] = ()  # our config fields this family's config.json does not have
    redundant: tuple[str, ...] = ()  # checkpoint tensors that carry nothing of their own (tied, buffers)

    def architecture(self, head: str | None) -> str:
        return self.classes + ARCHITECTURES[head]

    def head_keys(self, head: str | None) -> Keys:
        if head is not None and head not in self.heads:
            raise BertforgeError(f"{self.model_type} has no {head} head (it has {', '.join(sorted(self.heads))})")
        return self.heads.get(head, []) if head else []


ARCHITECTURES = {
    None: "Model",
    "pretrain": "ForPreTraining",
    "discriminator": "ForPreTraining",
    "mlm": "ForMaskedLM",
    "classify": "ForSequenceClassification",
    "tag": "ForTokenClassification",
    "span": "ForQuestionAnswering",
    "choice": "ForMultipleChoice",
    "extsum": "ForExtractiveSummarization",
}
_POOLED = frozenset({None, "pretrain", "classify", "choice", "extsum"})
_BASE_OMIT = ("embedding_size", "num_hidden_groups", "inner_group_num")

BERT = Family(
    "bert",
    "bert",
    "Bert",
    _BERT_EMBEDDINGS,
    _BERT_LAYER,
    {
        "pretrain": _mlm(
            "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias"
        )
        + [("head.nsp.{p}", ("cls.seq_relationship.{p}",))],
        "mlm": _mlm("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias"),
        **_common(_PLAIN, _PLAIN),
    },
    pooled_heads=_POOLED,
    omit=_BASE_OMIT,
    redundant=(
        "embeddings.position_ids",
        "embeddings.token_type_ids",
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
    ),  # fmt: skip
)
ROBERTA = Family(
    "roberta",
    "roberta",
    "Roberta",
    _BERT_EMBEDDINGS,
    _BERT_LAYER,
    {"mlm": _mlm("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"), **_common(_DENSE_OUT, _PLAIN)},
    pooled_heads=frozenset({None, "choice", "extsum"}),
    summary={"classify": "tanh"},
    positions_from_pad=True,
    mlm_act="gelu",  # RobertaLMHead calls gelu whatever hidden_act says
    defaults={"pad_token_id": 1},
    preset={"type_vocab_size": 1, "layer_norm_eps": 1e-5},
    omit=_BASE_OMIT,
    redundant=(
        "embeddings.position_ids",
        "embeddings.token_type_ids",
        "lm_head.decoder.weight",
        "lm_head.decoder.bias",
    ),
)
XLM_ROBERTA = dataclasses.replace(ROBERTA, model_type="xlm-roberta", classes="XLMRoberta")
DISTILBERT = Family(
    "distilbert",
    "distilbert",
    "DistilBert",
    [e for e in _BERT_EMBEDDINGS if not e[0].startswith(("embeddings.token_type", "pooler"))],
    [
        ("attn.qkv.{p}", ("attention.q_lin.{p}", "attention.k_lin.{p}", "attention.v_lin.{p}")),
        ("attn.out.{p}", ("attention.out_lin.{p}",)),
        ("attn_norm.{p}", ("sa_layer_norm.{p}",)),
        ("ffn.up.{p}", ("ffn.lin1.{p}",)),
        ("ffn.down.{p}", ("ffn.lin2.{p}",)),
        ("ffn_norm.{p}", ("output_layer_norm.{p}",)),
    ],
    {
        "mlm": _mlm("vocab_transform", "vocab_layer_norm", "vocab_projector.bias"),
        **_common(
            [("head.first.pre.{p}", ("pre_classifier.{p}",)), ("head.classifier.{p}", ("classifier.{p}",))],
            [("head.first.pre.{p}", ("pre_classifier.{p}",)), ("head.classifier.{p}", ("classifier.{p}",))],
        ),
    },
    layer_path="transformer.layer.{i}.",
    summary={"classify": "relu", "choice": "relu"},
    config_names={
        "dim": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "hidden_dim": "intermediate_size",
        "activation": "hidden_act",
        "dropout": "hidden_dropout_prob",
        "attention_dropout": "attention_probs_dropout_prob",
        "seq_classif_dropout": "classifier_dropout",
    },
    defaults={"num_hidden_layers": 6, "type_vocab_size": 0, "classifier_dropout": 0.2},
    omit=(*_BASE_OMIT, "type_vocab_size", "layer_norm_eps"),
    redundant=("embeddings.position_ids", "vocab_projector.weight"),
)
ELECTRA = Family(
    "electra",
    "electra",
    "Electra",
    [e for e in _BERT_EMBEDDINGS if not e[0].startswith("pooler")]
    + [("embeddings.project.{p}", ("embeddings_project.{p}",))],
    _BERT_LAYER,
    {
        "discriminator": [
            ("head.dense.{p}", ("discriminator_predictions.dense.{p}",)),
            ("head.out.{p}", ("discriminator_predictions.dense_prediction.{p}",)),
        ],
        "mlm": _mlm("generator_predictions.dense", "generator_predictions.LayerNorm", "generator_lm_head.bias"),
        **_common(
            _DENSE_OUT,
            [("head.first.pre.{p}", ("sequence_summary.summary.{p}",)), ("head.classifier.{p}", ("classifier.{p}",))],
        ),
    },
    summary={"classify": "gelu", "choice": "gelu"},
    mlm_act="gelu",  # ElectraGeneratorPredictions calls gelu whatever hidden_act says
    defaults={"embedding_size": 128},
    omit=("num_hidden_groups", "inner_group_num"),
    redundant=("embeddings.position_ids", "embeddings.token_type_ids", "generator_lm_head.weight"),
)
ALBERT = Family(
    "albert",
    "albert",
    "Albert",
    [e for e in _BERT_EMBEDDINGS if not e[0].startswith("pooler")]
    + [("embeddings.project.{p}", ("encoder.embedding_hidden_mapping_in.{p}",)), ("pooler.dense.{p}", ("pooler.{p}",))],
    [
        ("attn.qkv.{p}", ("attention.query.{p}", "attention.key.{p}", "attention.value.{p}")),
        ("attn.out.{p}", ("attention.dense.{p}",)),
        ("attn_norm.{p}", ("attention.LayerNorm.{p}",)),
        ("ffn.up.{p}", ("ffn.{p}",)),
        ("ffn.down.{p}", ("ffn_output.{p}",)),
        ("ffn_norm.{p}", ("full_layer_layer_norm.{p}",)),
    ],
    {
        "pretrain": _mlm("predictions.dense", "predictions.LayerNorm", "predictions.bias")
        + [("head.nsp.{p}", ("sop_classifier.classifier.{p}",))],
        "mlm": _mlm("predictions.dense", "predictions.LayerNorm", "predictions.bias"),
        **_common(_PLAIN, _PLAIN),
    },
    layer_path="encoder.albert_layer_groups.{g}.albert_layers.{j}.",
    pooled_heads=_POOLED,
    always_project=True,
    preset={"embedding_size": 128},
    config_names={"classifier_dropout_prob": "classifier_dropout"},
    defaults={
        "embedding_size": 128,
        "hidden_act": "gelu_new",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": 0.1,
    },  # fmt: skip
    redundant=(
        "embeddings.position_ids",
        "embeddings.token_type_ids",
        "predictions.decoder.weight",
        "predictions.decoder.bias",
    ),  # fmt: skip
)

# Heads with layers of their own: (the config.extra key counting them, keys per layer ({i}), keys
# present when there is at least one layer), expanded like the encoder's layers.
HEAD_LAYER_KEYS: dict[str, tuple[str, Keys, Keys]] = {
    "extsum": (
        "extsum_inter_layers",
        [
            (f"head.inter.layers.{{i}}.{w}.{{p}}", (f"extsum.inter.layers.{{i}}.{w}.{{p}}",))
            for w in ("attn_norm", "qkv", "out", "ffn_norm", "up", "down")
        ],
        [("head.inter.norm.{p}", ("extsum.inter.norm.{p}",))],
    ),
}

FAMILIES = {f.model_type: f for f in (BERT, ROBERTA, XLM_ROBERTA, DISTILBERT, ELECTRA, ALBERT)}


def family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise BertforgeError(f"model_type {model_type!r} is not supported (supported: {', '.join(FAMILIES)})")
    return FAMILIES[model_type]
