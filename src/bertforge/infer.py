"""The one inference path: tokenize in batch, sort by length, batch under a token budget, run the
(unpadded) encoder, and hand results back in the caller's order.

Sorting by length means a batch pads little; the unpadded encoder then spends nothing on the padding
that is left. ``embed`` and ``Embedder`` build sentence embeddings on top of it.
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
from .modeldir import ModelDir, PoolingSettings
from .outputs import progress_bar
from .precision import prepare
from .tokenizer import Tokenizer

POOLING = ("mean", "cls", "pooler")


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
    """(B, H) sentence vectors: mean over real tokens, the [CLS] vector, or the tanh pooler."""
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
        return (output.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if pooling == "cls":
        return output.last_hidden_state[:, 0]
    if pooling == "pooler":
        if output.pooler_output is None:
            raise BertforgeError("this model has no pooler (DistilBERT and ELECTRA have none): use mean or cls pooling")
        return output.pooler_output
    raise BertforgeError(f"unknown pooling {pooling!r} (choose from {', '.join(POOLING)})")


def embed(
    model: BertModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    normalize: bool = True,
    max_length: int = 512,
    max_tokens: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """(len(texts), H) float32 embeddings in the order given."""
    if pooling not in POOLING:
        raise BertforgeError(f"unknown pooling {pooling!r} (choose from {', '.join(POOLING)})")
    encodings = tokenizer.encode_batch(list(texts), max_length=max_length)

    def fn(out: EncoderOutput, batch: dict[str, Tensor]) -> Tensor:
        v = pool(out, batch["attention_mask"], pooling).float()
        return torch.nn.functional.normalize(v, dim=-1) if normalize else v

    result = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    batches = run_batches(
        model, tokenizer, encodings, fn, max_tokens=max_tokens, progress=progress, pool=pooling == "pooler"
    )
    for idx, vectors in batches:
        result[idx] = vectors.cpu().numpy()
    return result


@dataclass
class Embedder:
    """A sentence encoder ready to use: model, tokenizer and the checkpoint's pooling settings."""

    model: BertModel
    tokenizer: Tokenizer
    settings: PoolingSettings

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
        tokenizer = md.tokenizer
        return cls(load_for_inference(md, None, device, precision, runtime, compile), tokenizer, md.pooling)

    def __call__(
        self,
        texts: Sequence[str],
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        max_tokens: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        return embed(
            self.model,
            self.tokenizer,
            texts,
            pooling=pooling or self.settings.pooling,
            normalize=self.settings.normalize if normalize is None else normalize,
            max_length=max_length
            if max_length is not None
            else min(self.settings.max_length, self.model.config.max_length),
            max_tokens=max_tokens,
            progress=progress,
        )

    def similarity(self, a: Sequence[str], b: Sequence[str], **kwargs) -> np.ndarray:
        """Cosine similarity of each pair (a[i], b[i])."""
        if len(a) != len(b):
            raise BertforgeError(f"{len(a)} first sentences but {len(b)} second sentences")
        v = self(list(a) + list(b), normalize=True, **kwargs)  # one pass: better batches
        return (v[: len(a)] * v[len(a) :]).sum(axis=1)


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
