"""Precisions for inference: bf16 (fused where the CPU has it), int8 (smoothed) and torch.compile,
checked against fp32 PyTorch on real text with the real minilm-l6 checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge import BertforgeError, Embedder, evaluate_file
from bertforge.api import load_task
from bertforge.device import native_bf16, resolve_precision
from bertforge.onnx import export_onnx
from bertforge.precision import quantize_int8

BERTFORGE = Path(sys.executable).parent / "bertforge"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_and_bf16_embeddings_keep_direction(minilm, texts, fp32_embeddings):
    torch_int8 = Embedder.from_pretrained(minilm, precision="int8")(texts)
    assert _cosines(torch_int8, fp32_embeddings).min() >= 0.98
    subprocess.run(
        [str(BERTFORGE), "export", "onnx", "--model", str(minilm), "--int8"], check=True, capture_output=True
    )
    onnx_int8 = Embedder.from_pretrained(minilm, precision="int8", runtime="onnx")
    assert onnx_int8.model.precision == "int8"
    onnx_int8 = onnx_int8(texts)
    assert _cosines(onnx_int8, fp32_embeddings).min() >= 0.98
    if native_bf16(torch.device("cpu")):  # the AVX512-BF16 / AMX CPUs this project is measured on
        bf16 = Embedder.from_pretrained(minilm, precision="bf16")(texts)
        assert _cosines(bf16, fp32_embeddings).min() >= 0.99
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")


def test_bf16_linear_layers_are_fused_where_the_cpu_has_bf16(minilm):
    """On a CPU with native bf16, `prepare` packs the encoder's linear layers for oneDNN and folds the
    feed-forward's GELU into its first; each fused layer computes what the plain bf16 layer and its
    activation compute (the embeddings' direction is checked above). Elsewhere the layers stay plain."""
    import torch.nn.functional as F

    from bertforge import load_pretrained
    from bertforge.precision import FusedLinear, prepare

    model = prepare(load_pretrained(minilm), "bf16", "cpu")
    layer = model.layers[0]
    linears = [layer.attn.qkv, layer.attn.out, layer.ffn.up, layer.ffn.down]
    assert model.unpad_above == 0.2 and prepare(load_pretrained(minilm), "fp32", "cpu").unpad_above == 0.0
    if not native_bf16(torch.device("cpu")):
        assert all(type(linear) is torch.nn.Linear for linear in linears)
        return
    assert all(isinstance(linear, FusedLinear) for linear in linears)
    assert isinstance(layer.ffn.act, torch.nn.Identity)
    torch.manual_seed(0)
    x = torch.randn(3, 7, 384).bfloat16()
    plain = torch.nn.Linear(384, 1536).bfloat16()
    for act, fn in (
        ("gelu", F.gelu),
        ("gelu_new", lambda y: F.gelu(y, approximate="tanh")),
        ("relu", F.relu),
        (None, None),
    ):
        want = (fn(plain(x)) if fn else plain(x)).float()
        got = FusedLinear(plain, act)(x)
        assert got.shape == (3, 7, 1536) and got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max() <= 0.02 * want.abs().max(), act  # bf16 rounding apart
    assert (FusedLinear(plain, "gelu")(x).float() - F.gelu(plain(x), approximate="tanh").float()).abs().max() > 0


def test_a_model_with_packed_weights_is_not_saved(minilm, tmp_path):
    """int8 (and fused bf16) layers hold packed weights: saving such a model is a one-line error, and
    nothing is written, instead of a KeyError from the checkpoint table."""
    from bertforge import load_pretrained, save_pretrained
    from bertforge.precision import prepare

    model = prepare(load_pretrained(minilm), "int8", "cpu")
    with pytest.raises(BertforgeError, match="prepared for int8 inference and holds packed weights"):
        save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_compile_flag_gives_the_same_embeddings(minilm, texts, fp32_embeddings, tmp_path):
    """`--compile` (torch.compile, dynamic shapes) over length-sorted batches of many shapes: the eager numbers."""
    rows = [i for i, t in enumerate(texts) if len(t.splitlines()) == 1][:60]  # one text a line
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts[i] for i in rows) + "\n", encoding="utf-8")
    proc = subprocess.run(
        [
            str(BERTFORGE),
            "embed",
            "--model",
            str(minilm),
            "-i",
            str(src),
            "-o",
            str(tmp_path / "e.npy"),
            "--compile",
            "--max-tokens",
            "256",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), fp32_embeddings[rows], atol=1e-4)
    proc = subprocess.run(
        [
            str(BERTFORGE),
            "embed",
            "--model",
            str(minilm),
            "-i",
            str(src),
            "-o",
            str(tmp_path / "o.npy"),
            "--compile",
            "--runtime",
            "onnx",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--compile is for the torch runtime" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_int8_smoothing_brings_embeddings_closer_to_fp32(minilm, texts, fp32_embeddings):
    """The smoothed layers compute the same function in fp32 and lose less to int8 than unsmoothed ones."""
    from bertforge import Tokenizer, load_pretrained
    from bertforge.infer import embed
    from bertforge.precision import smoothing_factors

    model = load_pretrained(minilm).eval()
    batch = {"input_ids": torch.tensor([[101, 7592, 2088, 999, 102]])}
    before = model(**batch).last_hidden_state
    factors = smoothing_factors(model)
    assert len(factors) == 2 * model.config.num_hidden_layers  # qkv and the feed-forward's first, each layer
    with torch.no_grad():
        for linear, s in factors.items():
            linear.weight.mul_(s)
            linear.register_forward_pre_hook(lambda _m, args, s=s: (args[0] / s,))
    torch.testing.assert_close(model(**batch).last_hidden_state, before, atol=1e-4, rtol=1e-4)

    tok = Tokenizer.from_pretrained(minilm)
    plain = _cosines(embed(quantize_int8(load_pretrained(minilm), smooth=False), tok, texts), fp32_embeddings)
    smoothed = _cosines(embed(quantize_int8(load_pretrained(minilm)), tok, texts), fp32_embeddings)
    assert smoothed.mean() > plain.mean() and smoothed.min() > plain.min()


def test_int8_costs_at_most_one_point_of_accuracy(sentiment):
    model, test = sentiment
    fp32 = evaluate_file(model, test)["accuracy"]
    int8 = evaluate_file(model, test, precision="int8")["accuracy"]
    assert fp32 > 0.7
    assert int8 >= fp32 - 0.01
    export_onnx(load_task(model)[1], model / "model.int8.onnx", int8=True)
    onnx_int8 = evaluate_file(model, test, precision="int8", runtime="onnx")["accuracy"]
    assert onnx_int8 >= fp32 - 0.01
