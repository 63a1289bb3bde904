"""Model configuration: a dataclass that reads and writes Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
import json
import numbers
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BertforgeError
from .families import Family, family

# Activations a BERT checkpoint may name in `hidden_act`; see model.ACTIVATIONS.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish")


# What a field's declared type accepts from a JSON file, and how an error names it.
_KINDS = {
    "int": ("an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "dict": ("an object", lambda v: isinstance(v, dict)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "None": ("null", lambda v: v is None),
}


def field_types(cls: type) -> dict[str, str]:
    """A dataclass's fields and their declared types (``"int"``, ``"str | None"``...)."""
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def check_fields(d: dict[str, Any], types: dict[str, str], prefix: str = "") -> None:
    """Raise if a value in ``d`` (read from a file) is not of its type in ``types`` (see ``field_types``),
    naming the field (after ``prefix``) and the value."""
    for name, declared in types.items():
        if name not in d:
            continue
        kinds = [k.split("[")[0] for k in declared.split(" | ")]
        if any(k not in _KINDS or _KINDS[k][1](d[name]) for k in kinds):
            continue
        value = reprlib.repr(d[name])
        raise BertforgeError(f"{prefix}{name} is {value}, not {' or '.join(_KINDS[k][0] for k in kinds)}")


@dataclass
class BertConfig:
    """The shape of a BERT-family model, with the field names of Hugging Face's ``BertConfig``.

    Defaults are bert-base-uncased, the model of Devlin et al. (2018). ``model_type`` names the family
    (``families.py``); its config.json is read and written in that family's own field names.
    """

    vocab_size: int = 30522  # WordPiece vocabulary of bert-base-uncased
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12  # head size 64 in every published size
    intermediate_size: int = 3072  # 4 x hidden, as published
    hidden_act: str = "gelu"  # the exact erf GELU, not the tanh approximation
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512  # learned absolute positions
    type_vocab_size: int = 2  # segment A / segment B
    initializer_range: float = 0.02  # std of the truncated-normal-like init
    layer_norm_eps: float = 1e-12  # the TF original's epsilon, kept by every checkpoint
    pad_token_id: int = 0
    classifier_dropout: float | None = None  # None: use hidden_dropout_prob
    # Task heads (Hugging Face names, so a fine-tuned directory loads in transformers).
    id2label: dict[int, str] | None = None
    problem_type: str | None = None  # single_label_classification | multi_label_classification | regression
    architectures: list[str] | None = None
    model_type: str = "bert"
    embedding_size: int | None = None  # ELECTRA, ALBERT: embeddings this wide, then projected to hidden_size
    num_hidden_groups: int = 1  # ALBERT: layers share the weights of this many groups
    inner_group_num: int = 1  # ALBERT: layers per group
    # Everything else found in config.json, written back untouched on save.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise BertforgeError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise BertforgeError(
                f"hidden_act {self.hidden_act!r} is not supported (choose from {', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        if self.id2label is not None:
            self.id2label = _label_ids(self.id2label)
        family(self.model_type)  # an unknown family: one line listing the known
        if self.model_type == "albert" and self.num_hidden_layers % self.num_hidden_groups:
            raise BertforgeError(
                f"num_hidden_layers {self.num_hidden_layers} is not a multiple of num_hidden_groups "
                f"{self.num_hidden_groups}"
            )

    @property
    def family(self) -> Family:
        return family(self.model_type)

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def layer_order(self) -> list[int]:
        """Which of the distinct layers runs at each depth: ALBERT's layer i runs group i*G/L (each
        group's ``inner_group_num`` layers in turn); every other family has a layer of its own per depth."""
        if self.model_type != "albert":
            return list(range(self.num_hidden_layers))
        L, G, inner = self.num_hidden_layers, self.num_hidden_groups, self.inner_group_num
        return [(i * G // L) * inner + j for i in range(L) for j in range(inner)]

    @property
    def distinct_layers(self) -> int:
        return self.num_hidden_groups * self.inner_group_num if self.model_type == "albert" else self.num_hidden_layers

    @property
    def max_length(self) -> int:
        """The longest sequence the position table reads: RoBERTa's positions start at pad + 1."""
        offset = self.pad_token_id + 1 if self.family.positions_from_pad else 0
        return self.max_position_embeddings - offset

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in (self.id2label or {}).items()}

    def check_length(self, tokens: int) -> None:
        """Learned absolute positions: a sequence longer than the table cannot be read (either runtime)."""
        if tokens > self.max_length:
            raise BertforgeError(f"sequence of {tokens} tokens is longer than the model's {self.max_length} positions")

    def replace(self, **changes: Any) -> BertConfig:
        return dataclasses.replace(self, **changes)

    # -- Hugging Face config.json -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        fam = family(d.get("model_type", "bert"))
        d = {**fam.defaults, **{fam.config_names.get(k, k): v for k, v in d.items()}}
        if d.get("sinusoidal_pos_embds"):
            raise BertforgeError("sinusoidal_pos_embds is not supported (only learned positions)")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise BertforgeError(f"position_embedding_type {pos!r} is not supported (only 'absolute')")
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise BertforgeError("decoder / cross-attention BERT configs are not supported: bertforge is an encoder")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        if known.get("pad_token_id") is None:
            known.pop("pad_token_id", None)
        check_fields(known, field_types(cls))
        extra = {k: v for k, v in d.items() if k not in names and k not in ("label2id", "num_labels")}
        if "id2label" not in known and d.get("num_labels"):
            check_fields(d, {"num_labels": "int"})
            known["id2label"] = {i: f"LABEL_{i}" for i in range(d["num_labels"])}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """config.json in the family's own names (DistilBERT's dim, n_layers ...)."""
        fam = self.family
        names = {ours: theirs for theirs, ours in fam.config_names.items()}
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra" or f.name in fam.omit or (f.name == "embedding_size" and self.embedding_size is None):
                continue
            v = getattr(self, f.name)
            if f.name in ("id2label", "problem_type", "architectures", "classifier_dropout") and v is None:
                continue
            if f.name == "id2label" and not v:  # "{}" would read as num_labels 0 in transformers (QA saves no labels)
                continue
            d[names.get(f.name, f.name)] = v
        if self.id2label:
            d["id2label"] = {str(k): v for k, v in sorted(self.id2label.items())}
            d["label2id"] = {v: k for k, v in sorted(self.id2label.items())}
        if fam.model_type != "distilbert":
            d["position_embedding_type"] = "absolute"
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BertforgeError(f"{path}: no such file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BertforgeError(f"{path}: not a valid JSON config ({e})") from None
        if not isinstance(d, dict):
            raise BertforgeError(f"{path}: not a valid JSON config (top level is not an object)")
        try:
            return cls.from_dict(d)
        except TypeError as e:
            raise BertforgeError(f"{path}: bad config ({e})") from None
        except BertforgeError as e:  # model_type, activation, head count ...: say which file
            raise BertforgeError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    # -- size presets ---------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, model_type: str = "bert", **overrides: Any) -> BertConfig:
        """A named size: tiny, mini, small, medium, base, large, or ``L{layers}-H{hidden}``, in a family's
        form (RoBERTa: one segment, LayerNorm eps 1e-5; ALBERT: 128-wide embeddings, one shared layer)."""
        fam = family(model_type)
        shape = _preset_shape(name)
        if model_type == "distilbert":
            shape["type_vocab_size"] = 0
        return cls(**{**fam.defaults, **shape, **fam.preset, "model_type": model_type, **overrides})

    def with_vocab(self, vocab_size: int, pad_token_id: int) -> BertConfig:
        """This shape for a vocabulary; RoBERTa's position table grows by the pad + 1 its positions skip."""
        positions = self.max_length + (pad_token_id + 1 if self.family.positions_from_pad else 0)
        return self.replace(vocab_size=vocab_size, pad_token_id=pad_token_id, max_position_embeddings=positions)


def _label_ids(id2label: dict) -> dict[int, str]:
    """id2label with integer ids, which must run 0..n-1 (a head's rows), each naming a label of its own."""
    try:
        labels = {int(k): str(v) for k, v in id2label.items()}
    except ValueError:
        raise BertforgeError(f"id2label has ids that are not integers ({', '.join(map(str, id2label))})") from None
    missing = next((i for i in range(len(labels)) if i not in labels), None)
    if missing is not None:
        raise BertforgeError(f"id2label lacks id {missing}: its {len(labels)} ids must run 0 to {len(labels) - 1}")
    seen: set[str] = set()
    for i in range(len(labels)):
        if labels[i] in seen:
            raise BertforgeError(f"id2label names {labels[i]!r} twice: each id needs a label of its own")
        seen.add(labels[i])
    return labels


# Turc et al. (2019), "Well-Read Students Learn Better": 24 compact BERTs, L in {2..12}, H in {128..768},
# always with head size 64 and a feed-forward of 4H. Six of them have names.
NAMED_PRESETS = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}
COMPACT_LAYERS = (2, 4, 6, 8, 10, 12)
COMPACT_HIDDEN = (128, 256, 512, 768)


def preset_names() -> list[str]:
    compact = [f"L{n}-H{m}" for n in COMPACT_LAYERS for m in COMPACT_HIDDEN]
    return list(NAMED_PRESETS) + compact


def _preset_shape(name: str) -> dict[str, int]:
    if name in NAMED_PRESETS:
        layers, hidden = NAMED_PRESETS[name]
    else:
        m = re.fullmatch(r"L(\d+)-H(\d+)", name)
        if not m or int(m.group(1)) not in COMPACT_LAYERS or int(m.group(2)) not in COMPACT_HIDDEN:
            raise BertforgeError(
                f"unknown preset {name!r}: choose {', '.join(NAMED_PRESETS)} or L{{2,4,...,12}}-H{{128,256,512,768}}"
            )
        layers, hidden = int(m.group(1)), int(m.group(2))
    return {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": hidden // 64,
        "intermediate_size": 4 * hidden,
    }
