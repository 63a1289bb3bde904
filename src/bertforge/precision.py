"""Precision transforms for inference: a loaded model put in eval mode on its device at fp32, bf16
(fused oneDNN layers on CPUs with native bf16), fp16 or int8 (smoothed dynamic quantization).

  fp32  the reference; each linear layer on the faster of PyTorch's product and oneDNN's (``kernels``)
  bf16  weights and activations in bfloat16: CPUs with AVX512-BF16 / AMX, and GPUs
  fp16  GPUs only
  int8  dynamic quantization of every linear layer (weights int8 per output channel, activations
        quantized per batch on the fly), CPU only; embeddings, LayerNorms and attention stay fp32
  auto  bf16 where the hardware computes it natively, else fp32
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from .device import fit_threads, model_device, native_bf16, pick_device, resolve_precision
from .kernels import TrainLinear, packed_wins
from .model import BertModel


def encoders(model: nn.Module) -> list[BertModel]:
    """The BERT encoders inside a model (one under any head; a bare encoder is its own)."""
    return [m for m in model.modules() if isinstance(m, BertModel)]


def prepare(
    model: nn.Module, precision: str = "fp32", device: str | torch.device | None = None, compile: bool = False
) -> nn.Module:
    """Put a loaded model in eval mode, on its device, at the given precision (and compiled)."""
    device = pick_device(device)
    precision = resolve_precision(precision, device)
    if device.type == "cpu":
        fit_threads()
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
    # (Inductor makes its own fusions, and cannot lower these packed calls)
    if precision == "bf16" and device.type == "cpu" and native_bf16(device) and not compile:
        fuse_linears(model)
    if precision == "fp32" and device.type == "cpu" and not compile:
        fuse_linears(model, only=packed_wins)
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
    dynamic linear runs them, faster than fbgemm's VNNI kernels at the same error), else fbgemm."""
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
        vocab, length = bert.config.vocab_size, min(64, bert.config.max_length)
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
    """PyTorch's dynamic int8 Linear with two settings it does not expose: 8-bit activations always
    (``reduce_range`` off: ``quantize_int8`` keeps the sums in range), and per-input-channel smoothing
    (``inv_smooth``)."""

    inv_smooth: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, False)


class FusedLinear(nn.Module):
    """A linear layer, and the activation after it, as one oneDNN call on weights packed once for the
    CPU's kernels (bf16: AMX / AVX512-BF16; fp32: where ``kernels`` finds oneDNN faster): no bias
    broadcast, no separate pass over the activations. The ops are the ones Inductor emits for the same
    fusion (``mkldnn._linear_pointwise``). The plain weight is kept too (shared, not copied), so that a
    prepared model still saves and still exports to ONNX, which runs the plain product instead."""

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
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():  # (the packed weight is opaque to torch.export)
            y = F.linear(x, self.weight, self.bias)
            if self.post == "gelu":
                return F.gelu(y, approximate="tanh" if self.algorithm == "tanh" else "none")
            return F.relu(y) if self.post == "relu" else y
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, self.in_features), self.packed, self.bias, self.post, [], self.algorithm
        )
        return y.view(*x.shape[:-1], self.out_features)


def fuse_linears(model: nn.Module, only=None) -> nn.Module:
    """Swap the encoder's linear layers for ``FusedLinear``, the feed-forward's activation folded into
    its first layer (in place; for inference: the packed weights are not trained). ``only(shapes)``
    says which (in, out) shapes to swap (default: all); ``benchmarks/ablation.py`` times the result."""
    layers = [layer for bert in encoders(model) for layer in bert.layers]
    shapes = {(m.in_features, m.out_features) for layer in layers for m in (layer.attn.qkv, layer.attn.out,
              layer.ffn.up, layer.ffn.down)}  # fmt: skip
    chosen = only(shapes) if only is not None else dict.fromkeys(shapes, True)

    def fused(linear: nn.Module, activation: str | None = None) -> nn.Module:
        return FusedLinear(linear, activation) if chosen[(linear.in_features, linear.out_features)] else linear

    for layer in layers:
        attn, ffn = layer.attn, layer.ffn
        attn.qkv, attn.out, ffn.down = fused(attn.qkv), fused(attn.out), fused(ffn.down)
        up = fused(ffn.up, ffn.hidden_act if ffn.hidden_act in FusedLinear.POST_OPS else None)
        if isinstance(up, FusedLinear) and up.post != "none":
            ffn.act = nn.Identity()
        ffn.up = up
    return model


def train_linears(model: nn.Module) -> Callable[[], None]:
    """For fp32 training on the CPU: each encoder linear layer as a ``TrainLinear``, its forward and its
    input gradient on whichever product ``packed_wins`` measured faster for their shapes (in place, the
    parameters shared; layers where the default wins both ways stay plain). Returns the undo."""
    layers = [layer for bert in encoders(model) for layer in bert.layers]
    slots = [
        (m, n)
        for layer in layers
        for m, n in ((layer.attn, "qkv"), (layer.attn, "out"), (layer.ffn, "up"), (layer.ffn, "down"))
        if type(getattr(m, n)) is nn.Linear
    ]
    shapes = {(getattr(m, n).in_features, getattr(m, n).out_features) for m, n in slots}
    wins = packed_wins(shapes | {(o, i) for i, o in shapes})  # (o, i): the input gradient's product
    swapped = []
    for m, name in slots:
        linear = getattr(m, name)
        forward, grad = wins[(linear.in_features, linear.out_features)], wins[(linear.out_features, linear.in_features)]
        if forward or grad:
            setattr(m, name, TrainLinear(linear, forward, grad))
            swapped.append((m, name, linear))

    def undo() -> None:
        for m, name, linear in swapped:
            setattr(m, name, linear)

    return undo


def quantize_int8(model: nn.Module, smooth: bool = True) -> nn.Module:
    """Dynamic int8 quantization of the linear layers: weights int8 per output channel, activations
    quantized per batch on the fly (oneDNN/AMX or fbgemm/VNNI kernels, see ``int8_engine``), a
    quantized copy of the model returned.

    Without VNNI, the AVX2 kernels add two u8 x s8 products in int16, which saturates past 32767.
    PyTorch's answer is 7-bit activations (``reduce_range``); we keep the activations at 8 bits,
    where the per-batch scale is coarse, and give the weights, scaled per output channel, 7 bits
    instead (-64..63: 2 x 255 x 64 stays in int16). With VNNI the products accumulate in int32 and
    both are 8 bits. The layers after a LayerNorm are smoothed (``smoothing_factors``).
    """
    from torch.ao.quantization import PerChannelMinMaxObserver, QConfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig
    if not has_vnni():
        seven_bits = PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-64, quant_max=63
        )
        qconfig = QConfig(activation=qconfig.activation, weight=seven_bits)

    model = copy.deepcopy(model)
    factors = smoothing_factors(model) if smooth else {}
    with torch.no_grad():
        for linear, s in factors.items():
            linear.weight.mul_(s.to(linear.weight.dtype))
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = int8_engine()  # weights are packed for it; the packed weights pick the kernels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's quantized tensors carry deprecation notices
            quantized = {}
            for name, linear in list(model.named_modules()):
                if isinstance(linear, nn.Linear):
                    linear.qconfig = qconfig
                    q = Int8Linear.from_float(linear)
                    if linear in factors:
                        q.inv_smooth = (1 / factors[linear]).float()
                    quantized[name] = q
            for name, q in quantized.items():
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, q)
    finally:
        torch.backends.quantized.engine = engine
    return model
