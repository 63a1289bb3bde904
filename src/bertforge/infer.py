"""The one inference path: tokenize in batch, sort by length, batch under a token budget, run the
(unpadded) encoder, and hand results back in the caller's order.

Sorting by length means a batch pads little; the unpadded encoder then spends nothing on the padding
that is left. ``embed`` and ``Embedder`` build sentence embeddings on top of it, with the modules of a
sentence-transformers directory (``sentence.py``) after the encoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Encoding
from torch import Tensor

from .batch import flatten_windows, token_batches
from .device import default_max_tokens, model_device, thread_tuner
from .errors import BertforgeError
from .model import BertModel, EncoderOutput
from .modeldir import ModelDir
from .outputs import progress_bar
from .precision import prepare
from .sentence import Pooling, SentenceModules, lowercased, prompt_length, write_sentence_modules
from .tokenizer import Tokenizer


def run_batches(
    model: BertModel,
    tokenizer: Tokenizer,
    encodings: Sequence[Encoding],
    fn: Callable[[EncoderOutput, dict[str, Tensor]], Tensor],
    *,
    max_tokens: int | None = None,
    progress: bool = False,
    desc: str = "encoding",
    **model_kwargs,
) -> Iterator[tuple[list[int], Tensor]]:
    """Yield (indices, fn(encoder output, batch)) for length-sorted batches of ``encodings``, each at
    most ``max_tokens`` padded tokens (default: the device's) and a quarter as many texts;
    ``model_kwargs`` go to every model call (``pool=False`` when the pooler is not read)."""
    device = model_device(model)
    if max_tokens is None:
        max_tokens = default_max_tokens(device)
    elif max_tokens < 1:
        raise BertforgeError(f"the batch budget (--max-tokens) must be at least 1 token, not {max_tokens}")
    batches = token_batches([len(e.ids) for e in encodings], max_tokens, max(1, max_tokens // 4))
    bar = progress_bar(progress, total=len(encodings), desc=desc, unit="seq", leave=False)
    tuner = thread_tuner() if device.type == "cpu" else None
    with torch.inference_mode():
        for idx in batches:
            batch = {k: v.to(device) for k, v in tokenizer.to_tensors([encodings[i] for i in idx]).items()}
            count = tuner.threads() if tuner is not None else None
            if count is not None and torch.get_num_threads() != count:
                torch.set_num_threads(count)
            start = time.perf_counter()
            out = fn(model(**batch, **model_kwargs), batch)
            if tuner is not None:
                tuner.record(count, batch["input_ids"].numel(), time.perf_counter() - start)
            yield idx, out
            bar.update(len(idx))
    if tuner is not None and torch.get_num_threads() != tuner.most:
        torch.set_num_threads(tuner.most)  # the process's other work (training, the caller's) keeps every CPU
    bar.close()


def pool(output: EncoderOutput, attention_mask: Tensor, pooling: str) -> Tensor:
    """(B, H) sentence vectors in one of ``sentence.POOLING``'s modes (mean, cls, max..., or the tanh pooler)."""
    return Pooling((pooling,))(output, attention_mask)


@dataclass
class Embedded:
    """Embeddings and what each text was read as: ``tokens`` (prompt and special tokens included) and
    whether it was ``truncated``; read in windows, one row per window, ``owner`` (the text of each row)
    and ``spans`` (each window's [start, end) characters in its text)."""

    vectors: np.ndarray  # (rows, D) float32
    tokens: np.ndarray  # (texts,) int64: tokens read (every window's, in windows)
    truncated: np.ndarray  # (texts,) bool: cut at the length limit (never, in windows)
    owner: np.ndarray  # (rows,) int64
    spans: np.ndarray  # (rows, 2) int64


class TextTooLong(BertforgeError):
    """A text over the model's length with truncation off (the server answers 413)."""

    status = 413


def embed(model: BertModel, tokenizer: Tokenizer, texts: Sequence[str], **kwargs) -> np.ndarray:
    """(len(texts), D) float32 embeddings in the order given (``embed_texts``' vectors)."""
    return embed_texts(model, tokenizer, texts, **kwargs).vectors


def embed_texts(
    model: BertModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_length: int = 512,
    max_tokens: int | None = None,
    progress: bool = False,
    modules: SentenceModules | None = None,
    prompt: str | None = None,
    truncate: bool = True,
    stride: int | None = None,
    dimensions: int | None = None,
) -> Embedded:
    """Embeddings of ``texts``: ``modules`` (default: mean pooling, normalised) after the encoder, with
    ``pooling``/``normalize`` overriding theirs; ``prompt`` goes before each text (and out of the pooling
    where the Pooling step excludes it). A text over ``max_length`` tokens is cut (``truncate``), refused
    (TextTooLong), or with ``stride`` read in windows overlapping by that many tokens. ``dimensions``
    keeps the first ones (Matryoshka), normalised again when the vectors are."""
    modules = (modules or SentenceModules()).override(pooling, normalize).check(model.config.hidden_size)
    width = modules.dimension(model.config.hidden_size)
    if dimensions is not None and not 1 <= dimensions <= width:
        raise BertforgeError(f"dimensions must be between 1 and {width} (this model's), not {dimensions}")
    if prompt and stride is not None:
        raise BertforgeError("windows are read without a prompt: this model's prompt would start only the first one")
    if prompt:
        texts = [prompt + t if isinstance(t, str) else t for t in texts]
    skip = prompt_length(tokenizer, prompt, max_length) if prompt else 0
    encodings = tokenizer.encode_batch(list(texts), max_length=max_length, stride=stride or 0)
    if not truncate and stride is None:
        for i, e in enumerate(encodings):
            if e.overflowing:
                n = len(tokenizer.encode(texts[i]).ids)
                raise TextTooLong(f"text {i} is {n} tokens; this model reads at most {max_length} (truncate it)")
    flat, owner = flatten_windows(encodings, stride is not None)

    def fn(out: EncoderOutput, batch: dict[str, Tensor]) -> Tensor:
        return modules.apply(out, batch["attention_mask"], skip)

    vectors = np.zeros((len(flat), width), dtype=np.float32)
    batches = run_batches(
        model, tokenizer, flat, fn, max_tokens=max_tokens, progress=progress, pool=modules.needs_pooler
    )
    for idx, v in batches:
        vectors[idx] = v.cpu().numpy()
    if dimensions is not None and dimensions < width:
        vectors = np.ascontiguousarray(vectors[:, :dimensions])
        if modules.normalize:
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    tokens = np.zeros(len(encodings), dtype=np.int64)
    np.add.at(tokens, owner, [len(e.ids) for e in flat])
    truncated = np.array([bool(e.overflowing) and stride is None for e in encodings], dtype=bool)
    return Embedded(vectors, tokens, truncated, np.array(owner, dtype=np.int64), window_spans(flat, len(prompt or "")))


def window_spans(encodings: Sequence[Encoding], shift: int = 0) -> np.ndarray:
    """(len(encodings), 2) the [start, end) characters each encoding's text tokens cover (``shift``: a
    prompt's length, taken off)."""
    spans = np.zeros((len(encodings), 2), dtype=np.int64)
    for i, e in enumerate(encodings):
        read = [o for o, s in zip(e.offsets, e.special_tokens_mask, strict=True) if not s]
        if read:
            spans[i] = max(read[0][0] - shift, 0), max(read[-1][1] - shift, 0)
    return spans


@dataclass
class Embedder:
    """A sentence encoder ready to use: model, tokenizer and the directory's sentence-transformers
    modules (``settings``: pooling, Dense, Normalize, prompts, similarity and length)."""

    model: BertModel
    tokenizer: Tokenizer
    settings: SentenceModules

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | ModelDir,
        device: str | None = None,
        precision: str = "fp32",
        runtime: str = "torch",
        compile: bool = False,
    ) -> Embedder:
        md = ModelDir.open(name_or_path)
        settings, tokenizer = md.sentence, md.tokenizer
        model = load_for_inference(md, None, device, precision, runtime, compile)
        return cls(model, lowercased(tokenizer) if settings.lowercase else tokenizer, settings.to(model_device(model)))

    @property
    def max_length(self) -> int:
        """Tokens a text is read in: the directory's length, within the model's."""
        limit = self.model.config.max_length
        return min(self.settings.max_length or limit, limit)

    def __call__(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        """(len(texts), D) embeddings of ``texts`` (``embed``'s options)."""
        return self.embed(texts, **kwargs).vectors

    def embed(
        self,
        texts: Sequence[str],
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        max_tokens: int | None = None,
        progress: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate: bool = True,
        stride: int | None = None,
        dimensions: int | None = None,
    ) -> Embedded:
        """Embeddings of ``texts`` with their token counts; ``pooling``/``normalize`` override the
        directory's, ``prompt`` or ``prompt_name`` (one of its prompts) replaces its default prompt;
        ``truncate``, ``stride`` and ``dimensions`` as ``embed_texts`` has them."""
        return embed_texts(
            self.model,
            self.tokenizer,
            texts,
            pooling=pooling,
            normalize=normalize,
            max_length=max_length if max_length is not None else self.max_length,
            max_tokens=max_tokens,
            progress=progress,
            modules=self.settings,
            prompt=self.settings.resolve_prompt(prompt, prompt_name),
            truncate=truncate,
            stride=stride,
            dimensions=dimensions,
        )

    def similarity(self, a: Sequence[str], b: Sequence[str], **kwargs) -> np.ndarray:
        """The score of each pair (a[i], b[i]) under the directory's similarity function (cosine unless
        it names dot, euclidean or manhattan)."""
        if len(a) != len(b):
            raise BertforgeError(f"{len(a)} first sentences but {len(b)} second sentences")
        v = torch.from_numpy(self(list(a) + list(b), **kwargs))  # one pass: better batches
        return self.settings.similarity(v[: len(a)], v[len(a) :]).numpy()


def save_sentence_transformer(
    model: BertModel, directory: str | Path, tokenizer: Tokenizer, modules: SentenceModules | None = None
) -> Path:
    """An encoder saved as a sentence-transformers directory (config.json, weights and tokenizer at the
    root, then modules.json and each module's folder) that ``SentenceTransformer(directory)`` loads."""
    from .checkpoint import save_pretrained

    write_sentence_modules(directory, modules or SentenceModules(), model.config.hidden_size)  # (checked first)
    return save_pretrained(model, directory, tokenizer=tokenizer)


def load_for_inference(
    md: ModelDir | str | Path,
    head: str | None,
    device: str | None = None,
    precision: str = "fp32",
    runtime: str = "torch",
    compile: bool = False,
):
    """The model of a directory, ready for ``run_batches``: PyTorch at a precision, or its ONNX graph."""
    from .checkpoint import load_pretrained
    from .device import RUNTIMES, pick_device

    if runtime not in RUNTIMES:
        raise BertforgeError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    if runtime == "onnx":
        from .onnx import EXPORTABLE_HEADS, OnnxModel

        if device is not None and pick_device(device).type != "cpu":
            raise BertforgeError(
                f"the onnx runtime runs on the CPU (onnxruntime's CPU provider); on {device} use --runtime torch"
            )
        if compile:
            raise BertforgeError("--compile is for the torch runtime; an ONNX graph is already compiled by onnxruntime")
        if precision not in ("fp32", "int8", "auto"):
            raise BertforgeError(f"the onnx runtime runs fp32 or int8 graphs; for {precision} use --runtime torch")
        if head not in EXPORTABLE_HEADS:
            raise BertforgeError(f"the {head} head has no ONNX export; run it with --runtime torch")
        int8 = precision == "int8"
        md = ModelDir.open(md)
        path = md.onnx_path(precision)
        if not path.is_file():
            flag = " --int8" if int8 else ""
            raise BertforgeError(f"{path}: no ONNX graph; run `bertforge export onnx --model {md.path}{flag}` first")
        return OnnxModel(path, md.config, head, source=md.path, int8=int8)
    return prepare(load_pretrained(md, head=head), precision, device, compile)
