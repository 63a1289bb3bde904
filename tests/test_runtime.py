"""Precisions and runtimes: bf16 and int8 PyTorch, ONNX fp32 and int8, all through the one inference
path, checked against fp32 PyTorch on real text with the real minilm-l6 checkpoint."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge import BertforgeError, Embedder, evaluate_file, load_pretrained
from bertforge.api import finetune, load_task
from bertforge.assets import fetch
from bertforge.runtime import RUNTIMES, export_onnx, native_bf16, quantize_int8, resolve_precision
from bertforge.tasks import TaskSpec
from bertforge.train import TrainArgs

BERTFORGE = Path(sys.executable).parent / "bertforge"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    with (fetch("rotten-tomatoes") / "test.csv").open(encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)][:200]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Path:
    """A copy of minilm-l6 we may write ONNX graphs into."""
    d = tmp_path_factory.mktemp("minilm") / "minilm"
    shutil.copytree(fetch("minilm-l6"), d)
    return d


@pytest.fixture(scope="module")
def fp32_embeddings(minilm, texts) -> np.ndarray:
    return Embedder.from_pretrained(minilm)(texts)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_onnx_fp32_matches_pytorch(minilm, texts, fp32_embeddings):
    proc = subprocess.run([str(BERTFORGE), "export", "onnx", "--model", str(minilm)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (minilm / "model.onnx").is_file()
    onnx = Embedder.from_pretrained(minilm, runtime="onnx")(texts)
    assert np.abs(onnx - fp32_embeddings).max() < 1e-4
    # and the raw encoder outputs, padding and all
    from bertforge import Tokenizer, load_pretrained
    from bertforge.infer import load_for_inference

    tok = Tokenizer.from_pretrained(minilm)
    batch = tok.to_tensors(tok.encode_batch(texts[:16]))
    ref = load_pretrained(minilm, unpad=False)(**batch).last_hidden_state.detach()
    graph = load_for_inference(minilm, None, precision="auto", runtime="onnx")
    assert graph.precision == "fp32"  # what /health reports: the graph's precision, "auto" resolved
    got = graph(**batch).last_hidden_state
    assert (got - ref).abs().max() < 1e-4
    with pytest.raises(BertforgeError, match=r"^the onnx runtime runs fp32 or int8 graphs; for bf16 use --runtime torch$"):
        load_for_inference(minilm, None, precision="bf16", runtime="onnx")


def test_int8_and_bf16_embeddings_keep_direction(minilm, texts, fp32_embeddings):
    torch_int8 = Embedder.from_pretrained(minilm, precision="int8")(texts)
    assert _cosines(torch_int8, fp32_embeddings).min() >= 0.98
    subprocess.run([str(BERTFORGE), "export", "onnx", "--model", str(minilm), "--int8"], check=True, capture_output=True)
    onnx_int8 = Embedder.from_pretrained(minilm, precision="int8", runtime="onnx")
    assert onnx_int8.model.precision == "int8"
    onnx_int8 = onnx_int8(texts)
    assert _cosines(onnx_int8, fp32_embeddings).min() >= 0.98
    if native_bf16(torch.device("cpu")):  # the AVX512-BF16 / AMX CPUs this project is measured on
        bf16 = Embedder.from_pretrained(minilm, precision="bf16")(texts)
        assert _cosines(bf16, fp32_embeddings).min() >= 0.99
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")


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
    from bertforge.infer import CPU_MAX_TOKENS, GPU_MAX_TOKENS, default_max_tokens, run_batches
    from bertforge.runtime import pick_device

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
    embedder = Embedder.from_pretrained(minilm, device="cpu")
    encodings = embedder.tokenizer.encode_batch(["ok"] * 600 + texts[:100], max_length=128)  # 3 tokens, then reviews

    def sizes(**kwargs) -> list[tuple[int, int]]:
        lengths = [len(e.ids) for e in encodings]
        runs = run_batches(embedder.model, embedder.tokenizer, encodings, lambda out, batch: out.last_hidden_state, **kwargs)
        return [(len(idx), max(lengths[i] for i in idx) * len(idx)) for idx, _ in runs]

    default = sizes()
    assert all(n <= 512 and padded <= 2048 for n, padded in default) and (512, 1536) in default
    assert sum(n for n, _ in default) == 700
    assert all(n <= 128 and padded <= 512 for n, padded in sizes(max_tokens=512))
    for bad in (0, -3):
        with pytest.raises(BertforgeError, match=f"batch budget .* at least 1 token, not {bad}"):
            sizes(max_tokens=bad)


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> tuple[Path, Path]:
    """minilm-l6 fine-tuned briefly on rotten-tomatoes (enough for ~75% held-out accuracy)."""
    data = fetch("rotten-tomatoes")
    out = tmp_path_factory.mktemp("rt") / "model"
    with (data / "train.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:1600]
    train = out.parent / "train.csv"
    with train.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        w.writerows(rows)
    test = out.parent / "test.csv"
    with (data / "test.csv").open(encoding="utf-8") as f, test.open("w", newline="", encoding="utf-8") as g:
        w = csv.DictWriter(g, ["text", "label"])
        w.writeheader()
        w.writerows(list(csv.DictReader(f))[:600])
    args = TrainArgs(out=out / "run", max_steps=50, batch_size=32, lr=1e-4, eval_every=50, progress=False)
    finetune("classify", "minilm-l6", train, out, spec=TaskSpec("classify", max_length=128), args=args)
    return out, test


def test_bf16_on_a_cpu_without_it_warns(monkeypatch, caplog):
    import bertforge.runtime as runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    with caplog.at_level("WARNING", logger="bertforge"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
        assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert [r.message for r in caplog.records if "no native bf16" in r.message] != []
    assert len(caplog.records) == 1  # auto chose fp32: nothing to warn about


def test_bf16_linear_layers_are_fused_where_the_cpu_has_bf16(minilm):
    """On a CPU with native bf16, `prepare` packs the encoder's linear layers for oneDNN and folds the
    feed-forward's GELU into its first; each fused layer computes what the plain bf16 layer and its
    activation compute (the embeddings' direction is checked above). Elsewhere the layers stay plain."""
    import torch.nn.functional as F

    from bertforge import load_pretrained
    from bertforge.runtime import FusedLinear, prepare

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
    for act, fn in (("gelu", F.gelu), ("gelu_new", lambda y: F.gelu(y, approximate="tanh")), ("relu", F.relu), (None, None)):
        want = (fn(plain(x)) if fn else plain(x)).float()
        got = FusedLinear(plain, act)(x)
        assert got.shape == (3, 7, 1536) and got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max() <= 0.02 * want.abs().max(), act  # bf16 rounding apart
    assert (FusedLinear(plain, "gelu")(x).float() - F.gelu(plain(x), approximate="tanh").float()).abs().max() > 0


def test_a_model_with_packed_weights_is_not_saved(minilm, tmp_path):
    """int8 (and fused bf16) layers hold packed weights: saving such a model is a one-line error, and
    nothing is written, instead of a KeyError from the checkpoint table."""
    from bertforge import load_pretrained, save_pretrained
    from bertforge.runtime import prepare

    model = prepare(load_pretrained(minilm), "int8", "cpu")
    with pytest.raises(BertforgeError, match="prepared for int8 inference"):
        save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_compile_flag_gives_the_same_embeddings(minilm, texts, fp32_embeddings, tmp_path):
    """`--compile` (torch.compile, dynamic shapes) over length-sorted batches of many shapes: the eager numbers."""
    rows = [i for i, t in enumerate(texts) if len(t.splitlines()) == 1][:60]  # one text a line
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts[i] for i in rows) + "\n", encoding="utf-8")
    proc = subprocess.run([str(BERTFORGE), "embed", "--model", str(minilm), "-i", str(src), "-o", str(tmp_path / "e.npy"),
                           "--compile", "--max-tokens", "256"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), fp32_embeddings[rows], atol=1e-4)
    proc = subprocess.run([str(BERTFORGE), "embed", "--model", str(minilm), "-i", str(src), "-o", str(tmp_path / "o.npy"),
                           "--compile", "--runtime", "onnx"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--compile is for the torch runtime" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_int8_smoothing_brings_embeddings_closer_to_fp32(minilm, texts, fp32_embeddings):
    """The smoothed layers compute the same function in fp32 and lose less to int8 than unsmoothed ones."""
    from bertforge import Tokenizer, load_pretrained
    from bertforge.infer import embed
    from bertforge.runtime import smoothing_factors

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


def test_onnx_classifier_logits_match(sentiment, tmp_path):
    model, test = sentiment
    proc = subprocess.run([str(BERTFORGE), "export", "onnx", "-m", str(model)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    task, net = load_task(model)
    _, onnx = load_task(model, runtime="onnx")
    with test.open(encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:64]
    batch = task.tokenizer.to_tensors(task.tokenizer.encode_batch(texts, max_length=128))
    with torch.no_grad():
        ref = net(**batch).logits
    assert (onnx(**batch).logits - ref).abs().max() < 1e-4
    out = tmp_path / "pred.jsonl"
    proc = subprocess.run([str(BERTFORGE), "predict", "-m", str(model), "-i", str(test), "-o", str(out), "--runtime", "onnx"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sum(1 for _ in out.open()) == 600


def test_onnx_export_of_a_hugging_face_task_model(tmp_path):
    """A transformers-saved BertForTokenClassification (no bertforge settings) exports with its head."""
    import transformers

    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, num_labels=5)
    torch.manual_seed(0)
    directory = tmp_path / "hf-tagger"
    transformers.BertForTokenClassification(cfg).save_pretrained(directory)
    shutil.copy(fetch("minilm-l6") / "vocab.txt", directory / "vocab.txt")
    proc = subprocess.run([str(BERTFORGE), "export", "onnx", "-m", str(directory)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    task, net = load_task(directory)
    _, onnx = load_task(directory, runtime="onnx")
    batch = task.tokenizer.to_tensors(task.tokenizer.encode_batch(["A short one.", "And a somewhat longer sentence here."]))
    with torch.no_grad():
        ref = net(**batch).logits
    assert ref.shape[-1] == 5
    real = batch["attention_mask"].bool()  # (the unpadded encoder leaves padding positions at zero)
    assert (onnx(**batch).logits[real] - ref[real]).abs().max() < 1e-4


def test_extsum_has_no_onnx_runtime(tmp_path):
    from bertforge.infer import load_for_inference

    with pytest.raises(BertforgeError, match="extsum head has no ONNX export"):
        load_for_inference(tmp_path, "extsum", runtime="onnx")


def _tiny_hf_model(directory: Path, architecture: str, **config) -> Path:
    """A small random transformers model (BertModel, BertForSequenceClassification...) with minilm's vocabulary."""
    import transformers

    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, **config)
    torch.manual_seed(0)
    getattr(transformers, architecture)(cfg).save_pretrained(directory)
    shutil.copy(fetch("minilm-l6") / "vocab.txt", directory / "vocab.txt")
    return directory


def _export(model: Path, *args: str) -> Path:
    """`bertforge export onnx`, which says one line and nothing else (no exporter chatter); the path it wrote."""
    proc = subprocess.run([str(BERTFORGE), "export", "onnx", "-m", str(model), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "" and proc.stdout.count("\n") == 1 and proc.stdout.startswith("wrote "), proc.stdout + proc.stderr
    return Path(proc.stdout.split()[1])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Small random encoder, classify (3 labels) and tag (5 labels) models, each with its ONNX graph
    (the classifier's int8 one as well)."""
    root = tmp_path_factory.mktemp("tiny")
    models = {
        "encoder": _tiny_hf_model(root / "encoder", "BertModel", max_position_embeddings=64),
        "classify": _tiny_hf_model(root / "classify", "BertForSequenceClassification", num_labels=3),
        "tag": _tiny_hf_model(root / "tag", "BertForTokenClassification", num_labels=5),
    }
    for directory in models.values():
        _export(directory)
    _export(models["classify"], "--int8")
    return models


def _copy(directory: Path, to: Path) -> Path:
    shutil.copytree(directory, to)
    return to


def test_the_onnx_runtime_without_onnxruntime_says_how_to_install_it(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as where the onnx extra is not installed
    says = r"--runtime onnx needs the onnx extra: pip install 'bertforge\[onnx\]' \(in a clone: pip install -e '.\[onnx\]'\)$"
    with pytest.raises(BertforgeError, match=says):
        Embedder.from_pretrained(tiny["encoder"], runtime="onnx")
    with pytest.raises(BertforgeError, match="ONNX export needs the onnx extra"):
        export_onnx(load_pretrained(tiny["encoder"]), tiny["encoder"] / "again.onnx")


def test_the_onnx_runtime_checks_the_device_it_is_given(tiny):
    """onnxruntime runs on its CPU provider here: a GPU asked for is an error, not a silent CPU run."""
    assert Embedder.from_pretrained(tiny["encoder"], device="cpu", runtime="onnx")(["a text"]).shape == (1, 32)
    with pytest.raises(BertforgeError, match="unknown device 'gpu'"):
        Embedder.from_pretrained(tiny["encoder"], device="gpu", runtime="onnx")
    with pytest.raises(BertforgeError, match="sees no GPU" if not torch.cuda.is_available() else "runs on the CPU"):
        Embedder.from_pretrained(tiny["encoder"], device="cuda", runtime="onnx")


def test_onnx_graph_older_than_its_weights_is_refused(tiny, tmp_path, caplog):
    """The graph records the sha256 of the weights it came from (through int8 quantization too); once
    the directory's weights change, loading it is a one-line error that says how to re-export."""
    import onnx
    from safetensors.torch import load_file, save_file

    from bertforge.runtime import WEIGHTS_SHA256, weights_sha256

    model = _copy(tiny["classify"], tmp_path / "model")
    for name in ("model.onnx", "model.int8.onnx"):
        meta = {p.key: p.value for p in onnx.load(model / name, load_external_data=False).metadata_props}
        assert meta[WEIGHTS_SHA256] == weights_sha256(model)
    with caplog.at_level("WARNING", logger="bertforge"):
        load_task(model, runtime="onnx")  # the weights it came from: fine, and silent
    assert caplog.records == []
    state = load_file(model / "model.safetensors")
    state["classifier.bias"] = state["classifier.bias"] + 1
    save_file(state, model / "model.safetensors")
    with pytest.raises(BertforgeError, match=f"older than the weights in {model}.*`bertforge export onnx --model {model}`$"):
        load_task(model, runtime="onnx")
    with pytest.raises(BertforgeError, match=f"model.int8.onnx is older .*`bertforge export onnx --model {model} --int8`$"):
        load_task(model, precision="int8", runtime="onnx")
    # an export from before graphs recorded their weights: loaded, with a warning
    graph = onnx.load(model / "model.onnx")
    del graph.metadata_props[:]
    onnx.save(graph, model / "model.onnx")
    with caplog.at_level("WARNING", logger="bertforge"):
        load_task(model, runtime="onnx")
    assert [r.message for r in caplog.records if "does not record which weights" in r.message] != []


def test_onnx_graph_that_does_not_fit_the_model_fails_at_load(tiny, tmp_path):
    """A head's graph cannot embed; a tag graph in a classify directory, or one with another label
    count, is refused when loaded (not a KeyError or a broadcasting error at the first batch)."""
    with pytest.raises(BertforgeError, match="graph of a classify head, not an encoder's, so it cannot embed"):
        Embedder.from_pretrained(tiny["classify"], runtime="onnx")
    texts = tmp_path / "texts.txt"
    texts.write_text("a short text\n", encoding="utf-8")
    proc = subprocess.run([str(BERTFORGE), "embed", "-m", str(tiny["classify"]), "-i", str(texts), "-o",
                           str(tmp_path / "e.npy"), "--runtime", "onnx"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("bertforge: error: "), proc.stderr[-2000:]
    assert "cannot embed; use --runtime torch" in proc.stderr and proc.stderr.count("\n") == 1

    model = _copy(tiny["classify"], tmp_path / "model")
    shutil.copy(tiny["tag"] / "model.onnx", model / "model.onnx")
    with pytest.raises(BertforgeError, match="is the graph of a tag head, not of the classify head .* needs; re-run"):
        load_task(model, runtime="onnx")
    shutil.copy(tiny["classify"] / "model.onnx", model / "model.onnx")
    (model / "config.json").write_text(
        (model / "config.json").read_text(encoding="utf-8").replace('"2": "LABEL_2"', '"2": "LABEL_2", "3": "LABEL_3"'),
        encoding="utf-8",
    )
    with pytest.raises(BertforgeError, match="outputs 3 labels where .*config.json says 4"):
        load_task(model, runtime="onnx")


def test_onnx_sequence_longer_than_the_positions_is_the_torch_error(tiny, tmp_path):
    """`--max-length` past the model's positions: the ONNX runtime says what the torch one says."""
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["word"] * 100) + "\n", encoding="utf-8")
    errors = []
    for runtime in RUNTIMES:
        proc = subprocess.run([str(BERTFORGE), "embed", "-m", str(tiny["encoder"]), "-i", str(long), "-o",
                               str(tmp_path / "e.npy"), "--max-length", "100000", "--runtime", runtime],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        errors.append(proc.stderr.split("bertforge: error: ")[-1].splitlines()[0])  # (among the progress bar's states)
    assert errors == ["sequence of 102 tokens is longer than the model's 64 positions"] * 2


def test_export_onnx_out_is_a_file_or_a_directory(tiny, tmp_path):
    """`--out DIR` writes DIR/model.onnx (model.int8.onnx with --int8); a path that cannot be written
    is a one-line error before the export, not a traceback after it."""
    out = tmp_path / "out"
    out.mkdir()
    assert _export(tiny["encoder"], "--out", str(out), "--int8") == out / "model.int8.onnx"
    assert (out / "model.int8.onnx").is_file() and not (out / "model.onnx").exists()
    assert _export(tiny["encoder"], "--out", f"{tmp_path / 'new'}/") == tmp_path / "new" / "model.onnx"  # made
    assert _export(tiny["encoder"], "--out", str(tmp_path / "g.onnx")) == tmp_path / "g.onnx"
    (tmp_path / "a-file").write_text("keep me", encoding="utf-8")
    for bad, says in ((Path("/proc/m.onnx"), "/proc/m.onnx: cannot write in /proc"),
                      (tmp_path / "a-file" / "m.onnx", f"{tmp_path / 'a-file'} is a file, not a directory"),
                      (tmp_path / "a-file", f"{tmp_path / 'a-file'}: is a file, not a directory")):  # never overwritten
        proc = subprocess.run([str(BERTFORGE), "export", "onnx", "-m", str(tiny["encoder"]), "--out", str(bad)],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith(f"bertforge: error: {bad}"), proc.stderr[-2000:]
        assert says in proc.stderr and proc.stderr.count("\n") == 1
    assert (tmp_path / "a-file").read_text(encoding="utf-8") == "keep me"


def test_export_onnx_names_the_models_it_exports(tiny, tmp_path):
    """The tasks whose heads export (from the code) are the ones `--help` and the error name."""
    import json

    from bertforge.runtime import EXPORTABLE_HEADS
    from bertforge.tasks import TASKS

    assert [t for t, task in TASKS.items() if task.head in EXPORTABLE_HEADS] == ["classify", "pair", "regress", "tag", "qa"]
    proc = subprocess.run([str(BERTFORGE), "export", "onnx", "--help"], capture_output=True, text=True)
    assert "Export an encoder, or a classify, pair, regress, tag or qa model (not extsum)" in " ".join(proc.stdout.split())
    model = _copy(tiny["encoder"], tmp_path / "extsum")
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps({**config, "bertforge": {"task": "extsum"}}), encoding="utf-8")
    proc = subprocess.run([str(BERTFORGE), "export", "onnx", "-m", str(model)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == (f"bertforge: error: {model}: an extsum model cannot be exported to ONNX "
                           "(encoder, classify, pair, regress, tag, qa can)\n")
