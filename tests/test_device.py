"""Device choice and precision names: a bad device or precision is a one-line error, bf16 on a CPU
without it warns, and the inference path sizes its batches for the device."""

from __future__ import annotations

import shutil

import pytest
import torch

from bertforge import BertforgeError, Embedder
from bertforge.device import resolve_precision


def test_precision_errors(minilm):
    with pytest.raises(BertforgeError, match="fp16 needs a GPU"):
        Embedder.from_pretrained(minilm, precision="fp16")
    with pytest.raises(BertforgeError, match="unknown precision"):
        Embedder.from_pretrained(minilm, precision="fp8")
    with pytest.raises(BertforgeError, match="unknown runtime"):
        Embedder.from_pretrained(minilm, runtime="tensorrt")
    empty = minilm.parent / "no-onnx"
    shutil.copytree(minilm, empty, ignore=shutil.ignore_patterns("*.onnx"))
    with pytest.raises(BertforgeError, match="bertforge export onnx"):
        Embedder.from_pretrained(empty, runtime="onnx")


def test_devices_are_checked_and_batches_sized_for_them(minilm, texts, tmp_path):
    from conftest import assert_one_line_error, run_all

    from bertforge.cli import BATCH_BUDGET
    from bertforge.device import CPU_MAX_TOKENS, GPU_MAX_TOKENS, default_max_tokens, pick_device
    from bertforge.infer import run_batches

    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(BertforgeError, match="unknown device 'gpu'"):
        pick_device("gpu")
    with pytest.raises(BertforgeError, match="runs on cpu or cuda"):
        pick_device("meta")
    with pytest.raises(BertforgeError, match="unknown device ''"):
        pick_device("")  # not the default, as an empty --api-key is not "no key"
    if torch.cuda.is_available():
        assert pick_device(None) == pick_device("cuda") == torch.device("cuda", 0)
        with pytest.raises(BertforgeError, match="GPU"):
            pick_device(f"cuda:{torch.cuda.device_count()}")
    else:
        assert pick_device(None) == torch.device("cpu")
        with pytest.raises(BertforgeError, match="PyTorch sees no GPU"):
            pick_device("cuda")
    (texts_file := tmp_path / "t.txt").write_text("a text\n")
    [proc] = run_all(["embed", "-m", minilm, "-i", texts_file, "-o", tmp_path / "e.npy", "--device", "gpu"], ok=False)
    assert_one_line_error(proc, "unknown device 'gpu' (cpu, cuda, cuda:N)")

    # the batch budget where none is given: the device's, and a quarter as many texts
    assert default_max_tokens(torch.device("cpu")) == CPU_MAX_TOKENS == 2048
    assert default_max_tokens(torch.device("cuda")) == GPU_MAX_TOKENS > CPU_MAX_TOKENS
    assert f"{CPU_MAX_TOKENS} on a CPU, {GPU_MAX_TOKENS} on a GPU" in BATCH_BUDGET  # what --help says
    from bertforge.cli.training import FINETUNE_ARGS, PRETRAIN_ARGS

    assert all(
        f"{CPU_MAX_TOKENS} on a CPU, {GPU_MAX_TOKENS} on a GPU" in t["max_tokens"][1]
        for t in (FINETUNE_ARGS, PRETRAIN_ARGS)
    )
    embedder = Embedder.from_pretrained(minilm, device="cpu")
    encodings = embedder.tokenizer.encode_batch(["ok"] * 600 + texts[:100], max_length=128)  # 3 tokens, then reviews

    def sizes(**kwargs) -> list[tuple[int, int]]:
        lengths = [len(e.ids) for e in encodings]
        runs = run_batches(
            embedder.model, embedder.tokenizer, encodings, lambda out, batch: out.last_hidden_state, **kwargs
        )
        return [(len(idx), max(lengths[i] for i in idx) * len(idx)) for idx, _ in runs]

    default = sizes()
    assert all(n <= 512 and padded <= 2048 for n, padded in default) and (512, 1536) in default
    assert sum(n for n, _ in default) == 700
    assert all(n <= 128 and padded <= 512 for n, padded in sizes(max_tokens=512))
    for bad in (0, -3):
        with pytest.raises(BertforgeError, match=f"batch budget .* at least 1 token, not {bad}"):
            sizes(max_tokens=bad)


def test_bf16_on_a_cpu_without_it_warns(monkeypatch, caplog):
    import bertforge.device

    monkeypatch.setattr(bertforge.device, "native_bf16", lambda device: False)
    with caplog.at_level("WARNING", logger="bertforge"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
        assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert [r.message for r in caplog.records if "no native bf16" in r.message] != []
    assert len(caplog.records) == 1  # auto chose fp32: nothing to warn about
