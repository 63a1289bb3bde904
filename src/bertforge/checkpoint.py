"""Hugging Face checkpoints in and out, through one key table per family.

``key_table`` expands the family's tables (``families.py``, the only place where Hugging Face's
weight names appear): each entry maps one of our parameters to one or more checkpoint tensors
(several are concatenated on dim 0: the fused query/key/value projection). Loading reads
config.json and model.safetensors (or a sharded safetensors index, or pytorch_model.bin with
``weights_only=True``), and reports exactly which head weights were freshly initialised and which
checkpoint weights went unused.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import BertConfig
from .errors import BertforgeError
from .families import HEAD_LAYER_KEYS, Keys
from .heads import HEADS, BertWithHead
from .model import BertModel
from .modeldir import ModelDir
from .outputs import atomic_path

log = logging.getLogger("bertforge")

# Checkpoint tensors a tied or derived weight makes redundant, in every family.
_TIED = ("head.mlm.decoder.weight",)


def key_table(config: BertConfig, head: str | None) -> Keys:
    """Every (our name, checkpoint names) pair for this config and head, expanded over layers: the
    family's tables (``families.py``) with the encoder under its prefix when there is a head."""
    fam = config.family
    entries = [(ours, hf) for ours, hf in fam.embeddings if _present(config, ours)]
    inner = config.inner_group_num
    for u in range(config.distinct_layers):
        path = fam.layer_path.format(i=u, g=u // inner, j=u % inner)
        entries += [(f"layers.{u}." + ours, tuple(path + h for h in hf)) for ours, hf in fam.layer]
    if head:
        entries = [("bert." + ours, tuple(f"{fam.prefix}.{h}" for h in hf)) for ours, hf in entries]
    entries += fam.head_keys(head)
    if head in HEAD_LAYER_KEYS:
        count, layer_keys, any_layer_keys = HEAD_LAYER_KEYS[head]
        n = int(config.extra.get(count, 0))
        entries += [
            (ours.replace("{i}", str(i)), tuple(h.replace("{i}", str(i)) for h in hf))
            for i in range(n)
            for ours, hf in layer_keys
        ] + (any_layer_keys if n else [])
    table = []
    for ours, hf in entries:
        for p in ("weight", "bias") if "{p}" in ours else ("",):
            table.append((ours.format(p=p), tuple(h.format(p=p) for h in hf)))
    return table


def _present(config: BertConfig, ours: str) -> bool:
    """Whether the encoder of this config has the parameter (segments, the E -> H projection, a pooler)."""
    if ours.startswith("embeddings.token_type"):
        return config.type_vocab_size > 0
    if ours.startswith("embeddings.project"):
        return config.embedding_width != config.hidden_size or config.family.always_project
    if ours.startswith("pooler."):
        return None in config.family.pooled_heads
    return True


# -- reading ---------------------------------------------------------------------------------------
def _one_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()  # torch's messages carry terminal colours
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")  # in order of preference


def weight_files(directory: Path) -> list[Path]:
    """The files holding a Hugging Face directory's weights: model.safetensors, a sharded index and its
    shards, or pytorch_model.bin (empty: none)."""
    path = next((directory / name for name in WEIGHT_FILES if (directory / name).is_file()), None)
    if path is None:
        return []
    if not path.name.endswith(".index.json"):
        return [path]
    try:
        shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
    except Exception as e:
        raise BertforgeError(f"{path}: not a readable checkpoint ({_one_line(e)})") from None
    return [path, *(directory / shard for shard in shards)]


def read_weights(directory: Path) -> dict[str, Tensor]:
    """The tensors of a Hugging Face directory: model.safetensors, its sharded index, or pytorch_model.bin."""
    from safetensors.torch import load_file

    files = weight_files(directory)
    if not files:
        raise BertforgeError(f"{directory}: no model.safetensors or pytorch_model.bin found")
    state: dict[str, Tensor] = {}
    for path in files[1:] if files[0].name.endswith(".index.json") else files:  # an index: its shards
        state.update(_read_file(path, load_file))
    return state


def _read_file(path: Path, load_file) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # weights only: a checkpoint can never run code here
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BertforgeError(f"{path}: no such file") from None
    except pickle.UnpicklingError:  # (torch's message advises weights_only=False: never, for a file from elsewhere)
        raise BertforgeError(f"{path}: not a readable checkpoint (not a PyTorch file of tensors alone)") from None
    except Exception as e:
        raise BertforgeError(f"{path}: not a readable checkpoint ({_one_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BertforgeError(f"{path}: not a state dict of tensors")
    return state


def _normalise_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Old TensorFlow-converted checkpoints say gamma/beta for LayerNorm weight/bias."""
    out = {}
    for k, v in state.items():
        if k.endswith(".gamma"):
            k = k[: -len(".gamma")] + ".weight"
        elif k.endswith(".beta"):
            k = k[: -len(".beta")] + ".bias"
        out[k] = v
    return out


@dataclass
class LoadReport:
    initialised: list[str] = field(default_factory=list)  # our head weights absent from the checkpoint
    unused: list[str] = field(default_factory=list)  # checkpoint tensors nothing read


def load_state(model: BertModel | BertWithHead, state: dict[str, Tensor], source: str) -> LoadReport:
    """Copy checkpoint tensors into ``model`` through the key table; raise on a missing encoder weight."""
    head = model.head_name if isinstance(model, BertWithHead) else None
    fam = model.config.family
    state = _normalise_names(state)
    prefix = fam.prefix + "."
    roots = {h.split(".")[0] for _, hf in fam.embeddings for h in hf} | {fam.layer_path.split(".")[0]}
    has_prefix = any(k.startswith(prefix) for k in state)
    if head and not has_prefix:  # a bare encoder checkpoint under a head: add the prefix
        state = {(prefix + k if k.split(".")[0] in roots else k): v for k, v in state.items()}
    elif not head and has_prefix:  # a task checkpoint read as an encoder: drop it
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    for _, (bias,) in (e for e in fam.heads.get(head or "", []) if e[0] == "head.mlm.decoder.bias"):
        legacy = bias.removesuffix("bias") + "decoder.bias"  # older checkpoints: the decoder's own bias
        if bias not in state and legacy in state:
            state[bias] = state.pop(legacy)

    ours = model.state_dict()
    report = LoadReport()
    used: set[str] = set()
    new_state: dict[str, Tensor] = {}
    for name, hf_names in key_table(model.config, head):
        present = [h for h in hf_names if h in state]
        if len(present) != len(hf_names):
            missing = [h for h in hf_names if h not in state]
            if name.startswith("head.") or name.startswith(("pooler.", "bert.pooler.")):
                report.initialised.append(name)
                continue
            raise BertforgeError(f"{source}: missing encoder weight {missing[0]!r}")
        tensor = torch.cat([state[h] for h in hf_names], dim=0) if len(hf_names) > 1 else state[hf_names[0]]
        expected = ours[name].shape
        if tensor.shape != expected:
            raise BertforgeError(
                f"{source}: shape mismatch for {'+'.join(hf_names)}: checkpoint {tuple(tensor.shape)}, "
                f"model {tuple(expected)}"
            )
        new_state[name] = tensor
        used.update(hf_names)
    report.unused = sorted(k for k in state if k not in used and not k.endswith(fam.redundant))
    result = model.load_state_dict(new_state, strict=False)
    leftover = set(result.missing_keys) - set(report.initialised) - set(_TIED)
    assert not leftover and not result.unexpected_keys, (leftover, result.unexpected_keys)
    # a pooler that this head never reads (transformers' token-level classes have none) is not news
    unread = () if head is None or model.head.uses_pooler else ("bert.pooler.dense.weight", "bert.pooler.dense.bias")
    worth_saying = [n for n in report.initialised if n not in unread]
    if worth_saying:
        log.warning("%s: freshly initialised (not in checkpoint): %s", source, _names(worth_saying))
    if report.unused:
        log.warning("%s: checkpoint weights not used: %s", source, _names(report.unused))
    return report


def _names(names: list[str], most: int = 8) -> str:
    """Weight names for a one-line message: all of a few; of many, their modules ('head.inter.* (24 tensors)')."""
    if len(names) <= most:
        return ", ".join(names)
    groups: dict[str, int] = {}
    for name in names:
        module = ".".join(name.split(".")[:2])
        groups[module] = groups.get(module, 0) + 1
    return ", ".join(f"{m}.* ({n} tensor{'s' if n > 1 else ''})" for m, n in groups.items())


def load_with_report(
    name_or_path: str | Path | ModelDir,
    head: str | None = None,
    *,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    problem_type: str | None = None,
    attention: str = "sdpa",
    unpad: bool = True,
    device: str | torch.device | None = None,
) -> tuple[BertModel | BertWithHead, LoadReport]:
    """A Hugging Face BERT directory (or a registry name such as ``minilm-l6``) as a model, and the
    report of what was freshly initialised (a new head's weights) and what went unused.

    Without ``head`` the model is the encoder; with one (pretrain, mlm, classify, tag, span, choice)
    the encoder and that head.
    """
    if head is not None and head not in HEADS:
        raise BertforgeError(f"unknown head {head!r} (choose from {', '.join(HEADS)})")
    md = ModelDir.open(name_or_path)
    directory, config = md.path, md.config
    if id2label is not None:
        config = config.replace(id2label=dict(id2label))
    elif num_labels is not None and num_labels != config.num_labels:
        config = config.replace(id2label={i: f"LABEL_{i}" for i in range(num_labels)})
    if problem_type is not None:
        config = config.replace(problem_type=problem_type)
    state = read_weights(directory)
    model: BertModel | BertWithHead
    model = (
        BertWithHead(config, head, attention=attention, unpad=unpad) if head else BertModel(config, attention, unpad)
    )
    report = load_state(model, state, str(directory))
    model.eval()
    if device is not None:
        model.to(device)
    return model, report


def load_pretrained(name_or_path: str | Path | ModelDir, head: str | None = None, **kwargs) -> BertModel | BertWithHead:
    """``load_with_report``'s model (what it freshly initialised or left unused is logged as a warning)."""
    return load_with_report(name_or_path, head, **kwargs)[0]


# -- writing ---------------------------------------------------------------------------------------
def export_state(model: BertModel | BertWithHead) -> dict[str, Tensor]:
    """Our state dict in Hugging Face names (the fused q/k/v split back), ready for safetensors. The
    pooler only where transformers' class for the head has one, so that class loads the file with no
    key missing or unexpected."""
    head = model.head_name if isinstance(model, BertWithHead) else None
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    pooled = head in model.config.family.pooled_heads
    for name, hf_names in key_table(model.config, head):
        if name.startswith(("pooler.", "bert.pooler.")) and not pooled:
            continue
        if name not in ours:  # int8 layers (precision.prepare) keep their weights in packed form
            raise BertforgeError(
                "this model was prepared for int8 inference and holds packed weights; "
                "save the model as loaded, before precision.prepare"
            )
        tensor = ours[name].detach().cpu()
        for h, part in zip(hf_names, tensor.chunk(len(hf_names), dim=0), strict=True):
            out[h] = part.contiguous().clone()
    return out


def save_pretrained(model: nn.Module, directory: str | Path, tokenizer=None) -> Path:
    """config.json + model.safetensors (+ tokenizer files) that ``transformers`` loads as the matching class."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    head = model.head_name if isinstance(model, BertWithHead) else None
    config = model.config.replace(architectures=[model.config.family.architecture(head)])
    state = export_state(model)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, tmp, metadata={"format": "pt"})
    with atomic_path(directory / "config.json") as tmp:
        config.save(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
