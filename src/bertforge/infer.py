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

from .batch import token_batches
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


def embed(
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
) -> np.ndarray:
    """(len(texts), D) float32 embeddings in the order given: ``modules`` (default: mean pooling,
    normalised) after the encoder, with ``pooling``/``normalize`` overriding theirs; ``prompt`` goes
    before each text (and out of the pooling where the Pooling step excludes it)."""
    modules = (modules or SentenceModules()).override(pooling, normalize).check(model.config.hidden_size)
    if prompt:
        texts = [prompt + t if isinstance(t, str) else t for t in texts]
    skip = prompt_length(tokenizer, prompt, max_length) if prompt else 0
    encodings = tokenizer.encode_batch(list(texts), max_length=max_length)

    def fn(out: EncoderOutput, batch: dict[str, Tensor]) -> Tensor:
        return modules.apply(out, batch["attention_mask"], skip)

    result = np.zeros((len(texts), modules.dimension(model.config.hidden_size)), dtype=np.float32)
    batches = run_batches(
        model, tokenizer, encodings, fn, max_tokens=max_tokens, progress=progress, pool=modules.needs_pooler
    )
    for idx, vectors in batches:
        result[idx] = vectors.cpu().numpy()
    return result


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

    def __call__(
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
    ) -> np.ndarray:
        """Embeddings of ``texts``; ``pooling``/``normalize`` override the directory's, ``prompt`` or
        ``prompt_name`` (one of its prompts) replaces its default prompt."""
        limit = self.model.config.max_length
        return embed(
            self.model,
            self.tokenizer,
            texts,
            pooling=pooling,
            normalize=normalize,
            max_length=max_length if max_length is not None else min(self.settings.max_length or limit, limit),
            max_tokens=max_tokens,
            progress=progress,
            modules=self.settings,
            prompt=self.settings.resolve_prompt(prompt, prompt_name),
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
