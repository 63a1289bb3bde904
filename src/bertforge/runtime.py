"""How a loaded model runs: precision (fp32, bf16, fp16, int8), optional torch.compile, or an
exported ONNX graph under onnxruntime. Whatever is chosen presents the same call as the PyTorch
model (``model(input_ids, attention_mask, token_type_ids)`` -> EncoderOutput / HeadOutput), so the
one inference path in ``infer.py`` runs them all.

  fp32  the reference
  bf16  weights and activations in bfloat16: CPUs with AVX512-BF16 / AMX, and GPUs
  fp16  GPUs only
  int8  dynamic quantization of every linear layer (weights int8 per output channel, activations
        quantized per batch on the fly), CPU only; embeddings, LayerNorms and attention stay fp32
  auto  bf16 where the hardware computes it natively, else fp32
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from .errors import BertforgeError, missing_extra
from .heads import BertWithHead, HeadOutput
from .model import BertModel, EncoderOutput
from .outputs import check_output

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
RUNTIMES = ("torch", "onnx")


def native_bf16(device: torch.device) -> bool:
    """Does this device compute bfloat16 matmuls natively (AMX / AVX512-BF16 on CPU, Ampere+ GPUs)?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_device(requested: str | torch.device | None) -> torch.device:
    """The device asked for (checked: a one-line error for a bad name or a GPU that is not there),
    else the GPU (the local rank's under torchrun) where PyTorch sees one, else the CPU."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise BertforgeError(f"unknown device {str(requested)!r} (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BertforgeError(f"{device}: PyTorch sees no GPU here (this torch is {torch.__version__}); use --device cpu")
        if device.index is None:  # each torchrun process its own GPU
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise BertforgeError(f"{device}: there are {torch.cuda.device_count()} GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type != "cpu":
        raise BertforgeError(f"{device}: bertforge runs on cpu or cuda")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise BertforgeError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise BertforgeError("fp16 needs a GPU; on a CPU use bf16 or int8")
    if precision == "int8" and device.type != "cpu":
        raise BertforgeError("int8 dynamic quantization runs on the CPU; on a GPU use bf16 or fp16")
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        logging.getLogger("bertforge").warning(
            "this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 runs emulated, slower than fp32; int8 is the fast option here"
        )
    return precision


def encoders(model: nn.Module) -> list[BertModel]:
    """The BERT encoders inside a model (one under any head; a bare encoder is its own)."""
    return [m for m in model.modules() if isinstance(m, BertModel)]


def prepare(model: nn.Module, precision: str = "fp32", device: str | torch.device | None = None, compile: bool = False) -> nn.Module:
    """Put a loaded model in eval mode, on its device, at the given precision (and compiled)."""
    device = pick_device(device)
    precision = resolve_precision(precision, device)
    model.eval().to(device)
    if precision == "bf16":
        model.to(torch.bfloat16)
    elif precision == "fp16":
        model.to(torch.float16)
    elif precision == "int8":
        model = quantize_int8(model)
    if precision in ("fp32", "int8"):  # matmul-bound: skip even the little padding of sorted batches
        for bert in encoders(model):
            bert.unpad_above = 0.0
    if precision == "bf16" and device.type == "cpu" and native_bf16(device) and not compile:
        fuse_bf16(model)  # (Inductor makes its own fusions, and cannot lower these packed calls)
    model.precision = precision
    if compile:
        # the encoder's choice between its padded and unpadded paths reads the mask (a data-dependent
        # branch): dynamo breaks the graph there, as intended, and would warn about it at length
        torch._logging.set_logs(dynamo=logging.ERROR)
        model.forward = torch.compile(model.forward, dynamic=True)
    return model


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags /proc/cpuinfo lists (read once; empty where there is none)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def has_vnni() -> bool:
    """Does this CPU have VNNI (int8 dot products accumulated in int32, AVX512-VNNI or AVX-VNNI)?"""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def int8_engine() -> str:
    """The quantized kernels to pack int8 weights for: oneDNN where the CPU has AMX int8 tiles (its
    dynamic linear runs them: 2.4x fbgemm's VNNI kernels on minilm's shapes, same error), else fbgemm."""
    engines = torch.backends.quantized.supported_engines
    return "onednn" if "amx_int8" in cpu_flags() and "onednn" in engines else "fbgemm"


def smoothing_factors(model: nn.Module, alpha: float = 0.5) -> dict[nn.Linear, torch.Tensor]:
    """Per-input-channel factors for the linear layers that read a LayerNorm's output (qkv and the
    feed-forward's first), as in SmoothQuant (Xiao et al., 2022). A few channels of BERT's hidden
    states are outliers in every token, and a whole batch of activations shares one int8 scale, so
    they cost the other channels their precision. Dividing channel j by s_j = a_j^alpha /
    max|W_:,j|^(1 - alpha) and multiplying the weights' column j by it leaves the product unchanged
    and evens out both ranges. The activation ranges a_j are measured on random token sequences from
    the model's own vocabulary: the outlier channels are the model's, not the text's, so no data is needed.
    """
    factors = {}
    generator = torch.Generator().manual_seed(0)
    for bert in encoders(model):
        linears = [linear for layer in bert.layers for linear in (layer.attn.qkv, layer.ffn.up)]
        ranges: dict[nn.Linear, torch.Tensor] = {}

        def record(linear, inputs, _output, ranges=ranges):
            a = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0).float()
            ranges[linear] = torch.maximum(ranges[linear], a) if linear in ranges else a

        hooks = [linear.register_forward_hook(record) for linear in linears]
        vocab, length = bert.config.vocab_size, min(64, bert.config.max_position_embeddings)
        ids = torch.randint(min(1000, vocab // 2), vocab, (16, length), generator=generator)
        try:
            with torch.inference_mode():
                bert(ids.to(model_device(bert)), pool=False)
        finally:
            for hook in hooks:
                hook.remove()
        for linear in linears:
            w = linear.weight.detach().abs().amax(0).float().clamp(min=1e-5)
            factors[linear] = (ranges[linear].clamp(min=1e-5).pow(alpha) / w.pow(1 - alpha)).clamp(min=1e-2, max=1e2)
    return factors


class Int8Linear(DynamicLinear):
    """PyTorch's dynamic int8 Linear with two settings it does not expose: 8-bit activations where
    VNNI makes them safe (``reduce_range``), and per-input-channel smoothing (``inv_smooth``)."""

    reduce_range = True
    inv_smooth: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, self.reduce_range)


class FusedLinear(nn.Module):
    """A bf16 linear layer, and the activation after it, as one oneDNN call on weights packed once
    for the CPU's (AMX) kernels: no bias broadcast, no separate pass over the activations. The ops
    are the ones Inductor emits for the same fusion (``mkldnn._linear_pointwise``)."""

    POST_OPS = {  # activation name -> (oneDNN post-op, its algorithm)
        "gelu": ("gelu", "none"),  # exact erf
        "gelu_new": ("gelu", "tanh"),
        "gelu_pytorch_tanh": ("gelu", "tanh"),
        "gelu_fast": ("gelu", "tanh"),
        "relu": ("relu", ""),
    }

    def __init__(self, linear: nn.Linear, activation: str | None = None, batch_tokens: int = 2048):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.post, self.algorithm = self.POST_OPS[activation] if activation else ("none", "")
        # packed for batches of ``batch_tokens`` rows (a hint: the inference path's token budget) in an
        # opaque layout, kept outside the state dict; the bias stays a plain parameter
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_tokens)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, self.in_features), self.packed, self.bias, self.post, [], self.algorithm
        )
        return y.view(*x.shape[:-1], self.out_features)


def fuse_bf16(model: nn.Module) -> nn.Module:
    """Swap the encoder's linear layers of a bf16 model on a CPU with native bf16 for ``FusedLinear``,
    with the feed-forward's activation folded into its first layer (in place; for inference: the
    packed weights are not trained): 1.16-1.20x the plain layers on minilm (``benchmarks/ablation.py``)."""
    for bert in encoders(model):
        for layer in bert.layers:
            attn, ffn = layer.attn, layer.ffn
            attn.qkv, attn.out = FusedLinear(attn.qkv), FusedLinear(attn.out)
            if ffn.hidden_act in FusedLinear.POST_OPS:
                ffn.up, ffn.act = FusedLinear(ffn.up, ffn.hidden_act), nn.Identity()
            else:
                ffn.up = FusedLinear(ffn.up)
            ffn.down = FusedLinear(ffn.down)
    return model


def quantize_int8(model: nn.Module, smooth: bool = True) -> nn.Module:
    """Dynamic int8 quantization of the linear layers: weights int8 per output channel, activations
    quantized per batch on the fly (oneDNN/AMX or fbgemm/VNNI kernels, see ``int8_engine``), a
    quantized copy of the model returned.

    PyTorch's dynamic Linear quantizes activations to 7 bits (``reduce_range``) so that the
    AVX2 kernels' int16 intermediate sums cannot saturate. On VNNI CPUs the products accumulate in
    int32 and the full 8 bits are safe: that halves the rounding error, so there we use them. The
    layers after a LayerNorm are smoothed (``smoothing_factors``). MiniLM sentence embeddings of
    1,024 rotten-tomatoes reviews, cosine to fp32 worst / mean: 7 bits 0.915 / 0.973, 8 bits
    0.975 / 0.992, smoothed 0.981 / 0.995 (the first 200, as the tests take them: 0.982 -> 0.992).
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig

    model = copy.deepcopy(model)
    factors = smoothing_factors(model) if smooth else {}
    with torch.no_grad():
        for linear, s in factors.items():
            linear.weight.mul_(s.to(linear.weight.dtype))
    reduce_range = not has_vnni()
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = int8_engine()  # weights are packed for it; the packed weights pick the kernels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's quantized tensors carry deprecation notices
            quantized = {}
            for name, linear in list(model.named_modules()):
                if isinstance(linear, nn.Linear):
                    linear.qconfig = per_channel_dynamic_qconfig
                    q = Int8Linear.from_float(linear)
                    q.reduce_range = reduce_range
                    if linear in factors:
                        q.inv_smooth = (1 / factors[linear]).float()
                    quantized[name] = q
            for name, q in quantized.items():
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, q)
    finally:
        torch.backends.quantized.engine = engine
    return model


def model_device(model: Any) -> torch.device:
    """The device a model's inputs go to (ONNX sessions take CPU tensors)."""
    if isinstance(model, nn.Module):
        return next(model.parameters()).device
    return torch.device("cpu")


# -- ONNX ------------------------------------------------------------------------------------------------
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXPORTABLE_HEADS = (None, "classify", "tag", "span")
# what each head's graph outputs, by name and rank: how a loaded graph is told apart from another head's
GRAPH_OUTPUTS = {
    None: {"last_hidden_state": 3, "pooler_output": 2},
    "classify": {"logits": 2},
    "tag": {"logits": 3},
    "span": {"logits": 2, "end_logits": 2},
}
WEIGHTS_SHA256 = "bertforge.weights_sha256"  # the graph's metadata: the weights it was exported from


class _Graph(nn.Module):
    """The model as a function of three tensors to a tuple of tensors: what an ONNX graph can be."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids, attention_mask, token_type_ids)
        if isinstance(out, EncoderOutput):
            return out.last_hidden_state, out.pooler_output
        if out.end_logits is not None:
            return out.logits, out.end_logits
        return (out.logits,)


def output_names(head: str | None) -> list[str]:
    return list(GRAPH_OUTPUTS[head])


def weights_sha256(directory: str | Path) -> str | None:
    """sha256 of the weight files ``checkpoint.read_weights`` reads in a directory (None: there are none)."""
    from .checkpoint import weight_files

    files = weight_files(Path(directory))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:  # (hashlib.file_digest is Python 3.11+)
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet():
    """Keep the exporters' chatter out of our output: torch.onnx's progress lines and warnings
    ("torchvision is not installed"), and onnxruntime quantization's advice, logged on the root logger."""
    torch_onnx = logging.getLogger("torch.onnx")
    level = torch_onnx.level

    def errors_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    torch_onnx.setLevel(logging.ERROR)
    logging.root.addFilter(errors_only)  # (records logged on the root itself: ours come from "bertforge")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx.setLevel(level)
        logging.root.removeFilter(errors_only)


def export_onnx(model: BertModel | BertWithHead, path: str | Path, int8: bool = False) -> Path:
    """An ONNX graph with dynamic batch and length; ``int8`` quantizes its linear layers (onnxruntime).
    The graph records the sha256 of the weights it came from (``model.source``), so that loading it
    for a directory whose weights have changed since fails instead of answering with the old ones."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise missing_extra("ONNX export", "onnx") from None
    head = model.head_name if isinstance(model, BertWithHead) else None
    if head not in EXPORTABLE_HEADS:
        raise BertforgeError(f"the {head} head cannot be exported to ONNX (exportable: encoder, classify, tag, span)")
    path = check_output(path)  # fail now, not after the export
    path.parent.mkdir(parents=True, exist_ok=True)
    source = getattr(model, "source", None)
    weights = weights_sha256(source) if source is not None else None
    encoder = model.bert if isinstance(model, BertWithHead) else model
    was_unpad = encoder.unpad
    encoder.unpad = False  # the dense path has no data-dependent branches
    model.eval()
    graph = _Graph(model).eval()  # (a wrapper left in training mode would put the model back in it)
    example = (torch.full((2, 8), 100), torch.ones(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=model.config.max_position_embeddings)
    fp32_path = path.with_name(path.stem + ".fp32.onnx") if int8 else path
    try:
        with _quiet():
            program = torch.onnx.export(
                graph, example, input_names=list(INPUTS), output_names=output_names(head),
                dynamic_shapes=({0: batch, 1: seq},) * 3, dynamo=True, opset_version=18, verbose=False,
            )
            if weights is not None:
                program.model.metadata_props[WEIGHTS_SHA256] = weights  # (quantize_dynamic keeps it)
            program.save(str(fp32_path))
            if int8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                # the linear layers only, as in PyTorch int8: quantizing the embedding tables (Gather) as well
                # costs accuracy (minilm embeddings: worst cosine to fp32 0.978 instead of 0.982) for no speed
                quantize_dynamic(
                    str(fp32_path), str(path), weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["MatMul", "Gemm"],
                )
    except OSError as e:
        raise BertforgeError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        encoder.unpad = was_unpad
        if int8:
            fp32_path.unlink(missing_ok=True)
            for extra in path.parent.glob(fp32_path.name + ".data"):
                extra.unlink()
    return path


def _graph(head: str | None) -> str:
    return "an encoder" if head is None else f"a {head} head"


class OnnxModel:
    """An onnxruntime session that answers like the PyTorch model it was exported from.

    Given the model directory it stands for (``source``), loading checks the graph against it: the
    outputs its head needs, its label count, and the weights it was exported from (``int8``: it was
    exported with --int8, for the advice the errors give)."""

    def __init__(self, path: str | Path, config, head: str | None, threads: int | None = None,
                 source: str | Path | None = None, int8: bool = False):
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_extra("--runtime onnx", "onnx") from None

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BertforgeError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0]})") from None
        self.config = config
        self.head_name = head
        self.precision = "int8" if int8 else "fp32"  # the graph's, as /health reports it
        self.outputs = [o.name for o in self.session.get_outputs()]
        if source is not None:
            self._check(Path(path), Path(source), int8)

    def _check(self, path: Path, source: Path, int8: bool) -> None:
        export = f"re-run `bertforge export onnx --model {source}{' --int8' if int8 else ''}`"
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        ranks = {name: len(shape) for name, shape in outputs.items()}
        found = next((h for h, want in GRAPH_OUTPUTS.items() if want == ranks), "?")
        if found != self.head_name:
            what = f"a graph with outputs {', '.join(outputs)}" if found == "?" else f"the graph of {_graph(found)}"
            if self.head_name is None:  # embed on a fine-tuned model: its graph has no hidden states
                raise BertforgeError(f"{path} is {what}, not an encoder's, so it cannot embed; use --runtime torch")
            raise BertforgeError(f"{path} is {what}, not of the {self.head_name} head {source} needs; {export}")
        width = self.config.hidden_size if self.head_name is None else self.config.num_labels
        got = next(iter(outputs.values()))[-1]
        if self.head_name != "span" and isinstance(got, int) and got != width:
            unit = "hidden units" if self.head_name is None else "labels"
            raise BertforgeError(f"{path} outputs {got} {unit} where {source}/config.json says {width}; {export}")
        recorded = self.session.get_modelmeta().custom_metadata_map.get(WEIGHTS_SHA256)
        weights = weights_sha256(source)
        if recorded is None:
            logging.getLogger("bertforge").warning(
                "%s does not record which weights it was exported from (an older export), so it is not checked "
                "against %s's; %s to have it checked", path, source, export
            )
        elif weights is not None and recorded != weights:
            raise BertforgeError(f"{path} is older than the weights in {source} (exported from other weights); {export}")

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, **_: Any):
        self.config.check_length(input_ids.shape[1])  # (as BertModel does)
        feed = {
            "input_ids": input_ids.numpy(),
            "attention_mask": (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).numpy(),
            "token_type_ids": (token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)).numpy(),
        }
        out = dict(zip(self.outputs, (torch.from_numpy(np.asarray(a)) for a in self.session.run(None, feed)), strict=True))
        if self.head_name is None:
            return EncoderOutput(out["last_hidden_state"], out["pooler_output"])
        return HeadOutput(out["logits"], end_logits=out.get("end_logits"))
