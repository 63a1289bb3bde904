"""Sentence-transformers directories, read and written: the modules.json chain after the encoder
(Pooling in any of its modes, Dense, Normalize), the prompts, similarity function and length the
directory declares, and ``SentenceModules.apply``, which turns an ``EncoderOutput`` into sentence vectors.

The facts (key names, the order of concatenated modes, position weights, the prompt's length) are
sentence-transformers' own, as its ``Pooling``, ``Dense`` and ``Transformer`` modules define them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import BertforgeError
from .model import EncoderOutput

# sentence-transformers' modes, in the order its legacy pooling_mode_* flags concatenate them
MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING = (*MODES, "pooler")  # "pooler": bertforge's own, the encoder's tanh pooler over [CLS]
SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")
KINDS = ("Transformer", "Pooling", "Dense", "Normalize")
# the Transformer module's config file: sentence_bert_config.json, or an older family-named one
ENCODER_CONFIGS = tuple(
    f"sentence_{f}_config.json" for f in ("bert", "roberta", "distilbert", "camembert", "albert", "xlm-roberta")
)
SENTENCE_EMBEDDING = "sentence_embedding"


# -- the steps after the encoder --------------------------------------------------------------------------
@dataclass(frozen=True)
class Pooling:
    """Token vectors to one vector per text, in each of ``modes`` (``POOLING``) concatenated in that
    order; ``include_prompt=False`` leaves a prompt's tokens out."""

    modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in POOLING]
        if not self.modes or unknown:
            raise BertforgeError(f"unknown pooling {'+'.join(unknown)!r} (choose from {', '.join(POOLING)})")

    def __call__(self, out: EncoderOutput, attention_mask: Tensor, prompt_length: int = 0) -> Tensor:
        hidden = out.last_hidden_state.float()  # (B, T, H)
        mask = attention_mask
        if prompt_length and not self.include_prompt:
            mask = mask.clone()
            mask[:, :prompt_length] = 0  # (right padding: every text starts at position 0)
        return torch.cat([pool_mode(mode, hidden, mask, attention_mask, out) for mode in self.modes], dim=-1)


def pool_mode(mode: str, hidden: Tensor, mask: Tensor, attention_mask: Tensor, out: EncoderOutput) -> Tensor:
    """(B, H) vectors in one mode: ``mask`` marks the tokens pooled, ``attention_mask`` the real ones."""
    B, T, _ = hidden.shape
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if mode == "cls":  # the first pooled token: [CLS], or the first after the prompt
        return hidden[torch.arange(B, device=hidden.device), mask.to(torch.int).argmax(dim=1)]
    if mode == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
    if mode in ("mean", "mean_sqrt_len_tokens"):
        count = m.sum(dim=1).clamp(min=1e-9)  # (B, 1)
        return (hidden * m).sum(dim=1) / (count if mode == "mean" else count.sqrt())
    if mode == "weightedmean":  # token i (from 1, counted from the first real token) weighs i
        first = attention_mask.to(torch.int32).argmax(dim=1).view(-1, 1, 1)
        w = m * (torch.arange(1, T + 1, device=hidden.device, dtype=hidden.dtype).view(1, -1, 1) - first)
        return (hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)
    if mode == "lasttoken":  # the last pooled token (a zero vector when none is)
        last = T - 1 - mask.flip(1).to(torch.int).argmax(dim=1)
        return (hidden * m)[torch.arange(B, device=hidden.device), last]
    if out.pooler_output is None:
        raise BertforgeError("this model has no pooler (DistilBERT and ELECTRA have none): use mean or cls pooling")
    return out.pooler_output.float()


@dataclass(eq=False)
class Dense:
    """activation(W x + b) (+ x, or a projection of it, with ``use_residual``): sentence-transformers'
    Dense module. ``weight`` is (out_features, in_features); ``activation`` a torch.nn class path."""

    weight: Tensor
    bias: Tensor | None = None
    activation: str = "torch.nn.modules.activation.Tanh"
    use_residual: bool = False
    residual: Tensor | None = None  # (out, in): use_residual between widths that differ

    def __post_init__(self) -> None:
        self.act = activation_module(self.activation)  # (an unknown one fails here, when read)

    def __repr__(self) -> str:
        extra = ", use_residual=True" if self.use_residual else ""
        return (
            f"Dense({self.in_features} -> {self.out_features}, bias={self.bias is not None}, {self.activation}{extra})"
        )

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: str = "torch.nn.modules.activation.Tanh") -> Dense:
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(linear.weight.detach().clone(), bias, activation)

    def __call__(self, x: Tensor) -> Tensor:
        y = self.act(nn.functional.linear(x, self.weight, self.bias))
        if self.use_residual:
            y = y + (x if self.residual is None else nn.functional.linear(x, self.residual))
        return y

    def state(self) -> dict[str, Tensor]:
        """The weights under sentence-transformers' keys."""
        named = {"linear.weight": self.weight, "linear.bias": self.bias, "residual.weight": self.residual}
        return {k: v.detach().float().cpu().contiguous() for k, v in named.items() if v is not None}

    def to(self, device: torch.device | str) -> Dense:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.float().to(device)

        return replace(self, weight=move(self.weight), bias=move(self.bias), residual=move(self.residual))


def activation_module(name: str) -> nn.Module:
    """A torch.nn activation from its class path (torch.nn.modules.activation.Tanh, torch.nn.Identity)."""
    cls = getattr(nn, name.rsplit(".", 1)[-1], None) if name.startswith("torch.") else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise BertforgeError(f"unknown activation function {name!r} (use a torch.nn module such as torch.nn.Tanh)")
    return cls()


@dataclass(frozen=True)
class Normalize:
    """L2 normalisation of the sentence vector."""

    def __call__(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(x, p=2, dim=-1)


Step = Pooling | Dense | Normalize


# -- the whole chain and the directory's settings ---------------------------------------------------------
@dataclass
class SentenceModules:
    """What a sentence-transformers directory does around its encoder: ``steps`` (a Pooling, then
    Dense and Normalize steps in order), the length texts are cut to (None: the model's), lowercasing,
    named prompts and the similarity function. The default is bertforge's: mean pooling, normalised."""

    steps: tuple[Step, ...] = (Pooling(), Normalize())
    max_length: int | None = None
    lowercase: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str = "cosine"

    def __post_init__(self) -> None:
        self.steps = tuple(self.steps)
        if not self.steps or not isinstance(self.steps[0], Pooling):
            raise BertforgeError("a sentence encoder's modules start with one Pooling step")
        if any(isinstance(s, Pooling) for s in self.steps[1:]):
            raise BertforgeError("a sentence encoder has one Pooling step, not several")
        if self.similarity_fn_name not in SIMILARITIES:
            raise BertforgeError(
                f"unknown similarity function {self.similarity_fn_name!r} (choose from {', '.join(SIMILARITIES)})"
            )
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise BertforgeError(
                f"default prompt {self.default_prompt_name!r} is not one of the prompts ({', '.join(self.prompts)})"
            )

    # -- what the older PoolingSettings said --
    @property
    def pooling_step(self) -> Pooling:
        return self.steps[0]

    @property
    def pooling(self) -> str:
        """The pooling modes, "+"-joined in their order ("mean", "max+cls")."""
        return "+".join(self.pooling_step.modes)

    @property
    def normalize(self) -> bool:
        return isinstance(self.steps[-1], Normalize)

    @property
    def needs_pooler(self) -> bool:
        return "pooler" in self.pooling_step.modes

    def dimension(self, hidden_size: int) -> int:
        """The width of the sentence vectors over an encoder of ``hidden_size``."""
        dense = [s for s in self.steps if isinstance(s, Dense)]
        return dense[-1].out_features if dense else len(self.pooling_step.modes) * hidden_size

    def check(self, hidden_size: int, where: str = "") -> SentenceModules:
        """Refuse a Dense step whose input width is not what comes before it."""
        width = len(self.pooling_step.modes) * hidden_size
        for i, step in enumerate(self.steps):
            if isinstance(step, Dense):
                if step.in_features != width:
                    raise BertforgeError(
                        f"{where}Dense step {i} takes {step.in_features} features but gets {width} "
                        f"({self.pooling} pooling of {hidden_size} hidden units and the steps before it)"
                    )
                width = step.out_features
        return self

    def override(self, pooling: str | None = None, normalize: bool | None = None) -> SentenceModules:
        """The same chain pooled in other modes ("mean", "max+cls", "pooler") or (not) normalised at the end."""
        steps = list(self.steps)
        if pooling is not None:
            steps[0] = Pooling(tuple(pooling.split("+")), self.pooling_step.include_prompt)
        if normalize is not None:
            steps = [s for s in steps if not isinstance(s, Normalize)] + ([Normalize()] if normalize else [])
        return replace(self, steps=tuple(steps))

    def to(self, device: torch.device | str) -> SentenceModules:
        return replace(self, steps=tuple(s.to(device) if isinstance(s, Dense) else s for s in self.steps))

    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        """The text put before each input: ``prompt``, the prompt named, else the default one."""
        if prompt is not None and prompt_name is not None:
            raise BertforgeError("give a prompt or a prompt_name, not both")
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                known = ", ".join(self.prompts) or "none"
                raise BertforgeError(f"unknown prompt name {prompt_name!r} (this model's prompts: {known})")
            return self.prompts[prompt_name]
        if prompt is None and self.default_prompt_name is not None:
            return self.prompts[self.default_prompt_name]
        return prompt

    def apply(self, out: EncoderOutput, attention_mask: Tensor, prompt_length: int = 0) -> Tensor:
        """(B, dimension) float32 sentence vectors from the encoder's output."""
        x = self.pooling_step(out, attention_mask, prompt_length)
        for step in self.steps[1:]:
            x = step(x)
        return x

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """The score of each pair (a[i], b[i]) under the directory's similarity function."""
        if self.similarity_fn_name == "cosine":
            return (Normalize()(a) * Normalize()(b)).sum(-1)
        if self.similarity_fn_name == "dot":
            return (a * b).sum(-1)
        if self.similarity_fn_name == "euclidean":
            return -torch.sqrt(((a - b) ** 2).sum(-1))
        return -(a - b).abs().sum(-1)


# -- reading a directory --------------------------------------------------------------------------------
def _json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BertforgeError(f"{path}: not readable JSON ({str(e).splitlines()[0]})") from None


def _modules_json(root: Path) -> list[dict] | None:
    """modules.json's entries, each with a kind (Transformer, Pooling...) and a folder checked to lie inside."""
    path = root / "modules.json"
    if not path.is_file():
        return None
    entries = _json(path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "type" in e for e in entries):
        raise BertforgeError(f"{path}: expected a list of modules, each with a type")
    for e in entries:
        folder = str(e.get("path", ""))
        if Path(folder).is_absolute() or ".." in Path(folder).parts:
            raise BertforgeError(f"{path}: module path {folder!r} leaves the directory")
        kind = str(e["type"]).rsplit(".", 1)[-1]
        e["kind"] = kind if str(e["type"]).startswith("sentence_transformers.") and kind in KINDS else None
    return entries


def encoder_folder(root: Path, entries: list[dict] | None = None) -> str:
    """The folder of a directory's Transformer module ("" for the directory itself, or no modules.json)."""
    entries = _modules_json(root) if entries is None else entries
    return next((str(e.get("path", "")) for e in entries or [] if e["kind"] == "Transformer"), "")


def read_sentence_dir(root: Path, hidden_size: int | None = None) -> SentenceModules:
    """Every module of a sentence-transformers directory, in order, with its prompts, similarity and
    length; a directory without modules.json is an encoder, mean-pooled and normalised."""
    entries = _modules_json(root)
    max_length, lowercase = _encoder_settings(root / encoder_folder(root, entries))
    if entries is None:
        return SentenceModules(max_length=max_length, lowercase=lowercase)
    where = root / "modules.json"
    for e in entries:
        if e["kind"] is None:
            raise BertforgeError(
                f"{root}: unknown module type {e['type']!r} in modules.json (bertforge reads {', '.join(KINDS)})"
            )
    if entries[0]["kind"] != "Transformer" or sum(e["kind"] == "Transformer" for e in entries) != 1:
        raise BertforgeError(f"{where}: expected one Transformer module, first")
    steps: list[Step] = []
    for e in entries[1:]:
        folder = root / str(e.get("path", ""))
        if e["kind"] == "Pooling":
            steps.append(read_pooling(folder))
        elif e["kind"] == "Dense":
            steps.append(read_dense(folder))
        else:
            _check_input(folder / "config.json", "Normalize")
            steps.append(Normalize())
    path = root / "config_sentence_transformers.json"
    settings = _json(path) if path.is_file() else {}
    if not isinstance(settings, dict):
        raise BertforgeError(f"{path}: expected a JSON object")
    try:
        modules = SentenceModules(tuple(steps), max_length, lowercase, **_model_settings(settings, root))
    except BertforgeError as e:
        raise BertforgeError(f"{root}: {e}") from None
    return modules if hidden_size is None else modules.check(hidden_size, f"{where}: ")


def _encoder_settings(encoder: Path) -> tuple[int | None, bool]:
    """(max_length, lowercase) of the Transformer module: its config's tokenizer model_max_length, else
    max_seq_length, else the tokenizer's own (None: the model's), and do_lower_case."""
    path = next((encoder / n for n in ENCODER_CONFIGS if (encoder / n).is_file()), None)
    cfg = _json(path) if path is not None else {}
    if not isinstance(cfg, dict):
        raise BertforgeError(f"{path}: expected a JSON object")
    task = cfg.get("transformer_task", "feature-extraction")
    if task != "feature-extraction" or cfg.get("processing_kwargs") or cfg.get("query_expansion"):
        raise BertforgeError(f"{path}: bertforge reads feature-extraction encoders without processing_kwargs")
    tokenizer_args = cfg.get("processor_kwargs") or cfg.get("tokenizer_args") or {}
    length = tokenizer_args.get("model_max_length", cfg.get("max_seq_length"))
    if length is None and (encoder / "tokenizer_config.json").is_file():
        saved = _json(encoder / "tokenizer_config.json")
        length = saved.get("model_max_length") if isinstance(saved, dict) else None
        length = None if length is None or length > 1_000_000 else length  # (transformers' "no limit")
    return (None if length is None else int(length)), bool(cfg.get("do_lower_case", False))


def _model_settings(cfg: dict, root: Path) -> dict:
    """Prompts, default prompt and similarity from config_sentence_transformers.json."""
    where = root / "config_sentence_transformers.json"
    kind = cfg.get("model_type", "SentenceTransformer")
    if kind != "SentenceTransformer":
        raise BertforgeError(f"{where}: a {kind} directory; bertforge embeds with SentenceTransformer ones")
    prompts = cfg.get("prompts") or {}
    if not isinstance(prompts, dict):
        raise BertforgeError(f"{where}: prompts must map names to texts")
    return {
        "prompts": {str(k): "" if v is None else str(v) for k, v in prompts.items()},
        "default_prompt_name": cfg.get("default_prompt_name"),
        "similarity_fn_name": cfg.get("similarity_fn_name") or "cosine",
    }


def _check_input(path: Path, kind: str) -> dict:
    """A module's config, refused when it reads or writes something other than the sentence vector."""
    cfg = _json(path) if path.is_file() else {}
    if not isinstance(cfg, dict):
        raise BertforgeError(f"{path}: expected a JSON object")
    names = (cfg.get("module_input_name"), cfg.get("module_output_name"))
    if any(n not in (None, SENTENCE_EMBEDDING) for n in names):
        raise BertforgeError(
            f"{path}: a {kind} module on {'/'.join(map(str, names))}; bertforge reads sentence vectors"
        )
    return cfg


def read_pooling(folder: Path) -> Pooling:
    """1_Pooling/config.json: ``pooling_mode`` (a mode or a list, concatenated in its order), else the
    legacy pooling_mode_* flags (in sentence-transformers' fixed order; none: mean); ``include_prompt``."""
    path = folder / "config.json"
    cfg = _json(path) if path.is_file() else {}
    if not isinstance(cfg, dict):
        raise BertforgeError(f"{path}: expected a JSON object")
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(m for key, m in LEGACY_FLAGS.items() if cfg.get(key)) or ("mean",)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise BertforgeError(f"{path}: unknown pooling mode {unknown[0] if unknown else ''!r} (choose from {MODES})")
    return Pooling(modes, bool(cfg.get("include_prompt", True)))


def read_dense(folder: Path) -> Dense:
    """2_Dense/config.json and its weights (model.safetensors or pytorch_model.bin, keys linear.weight/bias)."""
    path = folder / "config.json"
    if not path.is_file():
        raise BertforgeError(f"{folder}: a Dense module without its config.json")
    cfg = _check_input(path, "Dense")
    try:
        n_in, n_out = int(cfg["in_features"]), int(cfg["out_features"])
    except (KeyError, TypeError, ValueError):
        raise BertforgeError(f"{path}: expected in_features and out_features") from None
    state = _read_weights(folder)
    bias, residual = bool(cfg.get("bias", True)), bool(cfg.get("use_residual", False))
    shapes = {"linear.weight": (n_out, n_in), **({"linear.bias": (n_out,)} if bias else {})}
    if residual and n_in != n_out:
        shapes["residual.weight"] = (n_out, n_in)
    for key, shape in shapes.items():
        if key not in state:
            raise BertforgeError(f"{folder}: the Dense weights lack {key}")
        if tuple(state[key].shape) != shape:
            raise BertforgeError(f"{folder}: {key} is {tuple(state[key].shape)}, not {shape} as config.json says")
    try:
        return Dense(
            state["linear.weight"].float(),
            state["linear.bias"].float() if bias else None,
            str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh")),
            residual,
            state["residual.weight"].float() if "residual.weight" in shapes else None,
        )
    except BertforgeError as e:
        raise BertforgeError(f"{path}: {e}") from None


def _read_weights(folder: Path) -> dict[str, Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(folder / "model.safetensors"))
        except Exception as e:
            raise BertforgeError(f"{folder / 'model.safetensors'}: not readable ({str(e).splitlines()[0]})") from None
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise BertforgeError(f"{folder / 'pytorch_model.bin'}: not readable ({str(e).splitlines()[0]})") from None
    raise BertforgeError(f"{folder}: no model.safetensors or pytorch_model.bin (the Dense module's weights)")


# -- the prompt and the tokenizer, as sentence-transformers' Transformer module has them ----------------
def prompt_length(tokenizer, prompt: str, max_length: int | None) -> int:
    """How many leading tokens the prompt is: the prompt alone, encoded, less a closing special token."""
    ids = tokenizer.encode(prompt, max_length=max_length).ids
    return len(ids) - 1 if ids and ids[-1] in tokenizer.special_ids else len(ids)


def lowercased(tokenizer):
    """The tokenizer with a Lowercase step before its normaliser (do_lower_case), unless it has one."""
    from tokenizers import Tokenizer as Backend

    from .tokenizer import Tokenizer

    spec = json.loads(tokenizer._backend.to_str())  # (the backend is kept whole: only its normaliser changes)
    norm = spec.get("normalizer")
    steps = norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm] if norm else []
    if any(s and s.get("type") == "Lowercase" for s in steps):
        return tokenizer
    spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Lowercase"}, *steps]}
    backend = Backend.from_str(json.dumps(spec))
    return Tokenizer(
        backend, True, tokenizer.model_max_length, specials=tokenizer.specials, settings=tokenizer.settings
    )


# -- writing one ----------------------------------------------------------------------------------------
def write_sentence_modules(directory: str | Path, modules: SentenceModules, hidden_size: int) -> Path:
    """modules.json, each module's folder, sentence_bert_config.json and config_sentence_transformers.json
    around an encoder already saved at ``directory``, as sentence-transformers loads them."""
    from safetensors.torch import save_file

    from . import __version__

    directory = Path(directory)
    modules.check(hidden_size)
    if modules.needs_pooler:
        raise BertforgeError("sentence-transformers has no pooler mode: save mean, cls or another of its modes")
    directory.mkdir(parents=True, exist_ok=True)
    entries = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    for i, step in enumerate(modules.steps, 1):
        kind = type(step).__name__
        folder = directory / f"{i}_{kind}"
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(step, Pooling):
            cfg = _pooling_config(step, hidden_size)
        elif isinstance(step, Dense):
            cfg = {
                "in_features": step.in_features,
                "out_features": step.out_features,
                "bias": step.bias is not None,
                "activation_function": step.activation,
                **({"use_residual": True} if step.use_residual else {}),
            }
            save_file(step.state(), str(folder / "model.safetensors"), metadata={"format": "pt"})
        else:
            cfg = {}
        (folder / "config.json").write_text(json.dumps(cfg, indent=4) + "\n", encoding="utf-8")
        entries.append({"idx": i, "name": str(i), "path": folder.name, "type": f"sentence_transformers.models.{kind}"})
    _write(directory / "modules.json", entries)
    encoder = {"do_lower_case": modules.lowercase}
    if modules.max_length is not None:
        encoder = {"max_seq_length": modules.max_length, **encoder}
    _write(directory / "sentence_bert_config.json", encoder)
    settings = {
        "model_type": "SentenceTransformer",
        "__version__": {"bertforge": __version__, "pytorch": torch.__version__.split("+")[0]},
        "prompts": modules.prompts,
        "default_prompt_name": modules.default_prompt_name,
        "similarity_fn_name": modules.similarity_fn_name,
    }
    _write(directory / "config_sentence_transformers.json", settings)
    return directory


def _pooling_config(step: Pooling, hidden_size: int) -> dict:
    """The legacy flags every sentence-transformers version reads, unless the modes' order needs the
    newer pooling_mode list."""
    if list(step.modes) == sorted(step.modes, key=MODES.index) and len(set(step.modes)) == len(step.modes):
        flags = {key: mode in step.modes for key, mode in LEGACY_FLAGS.items()}
        return {"word_embedding_dimension": hidden_size, **flags, "include_prompt": step.include_prompt}
    return {"embedding_dimension": hidden_size, "pooling_mode": list(step.modes), "include_prompt": step.include_prompt}


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
