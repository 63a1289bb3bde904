"""ONNX export and the ONNX runtime: fp32 and int8 graphs through the one inference path, checked
against PyTorch; a graph that does not fit its model directory is refused when loaded."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge import BertforgeError, Embedder, load_pretrained
from bertforge.api import load_task
from bertforge.assets import fetch
from bertforge.device import RUNTIMES
from bertforge.onnx import export_onnx

BERTFORGE = Path(sys.executable).parent / "bertforge"


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
    with pytest.raises(
        BertforgeError, match=r"^the onnx runtime runs fp32 or int8 graphs; for bf16 use --runtime torch$"
    ):
        load_for_inference(minilm, None, precision="bf16", runtime="onnx")


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
    proc = subprocess.run(
        [str(BERTFORGE), "predict", "-m", str(model), "-i", str(test), "-o", str(out), "--runtime", "onnx"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert sum(1 for _ in out.open()) == 600


def test_onnx_export_of_a_hugging_face_task_model(tmp_path):
    """A transformers-saved BertForTokenClassification (no bertforge settings) exports with its head."""
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=5
    )
    torch.manual_seed(0)
    directory = tmp_path / "hf-tagger"
    transformers.BertForTokenClassification(cfg).save_pretrained(directory)
    shutil.copy(fetch("minilm-l6") / "vocab.txt", directory / "vocab.txt")
    proc = subprocess.run([str(BERTFORGE), "export", "onnx", "-m", str(directory)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    task, net = load_task(directory)
    _, onnx = load_task(directory, runtime="onnx")
    batch = task.tokenizer.to_tensors(
        task.tokenizer.encode_batch(["A short one.", "And a somewhat longer sentence here."])
    )
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

    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **config
    )
    torch.manual_seed(0)
    getattr(transformers, architecture)(cfg).save_pretrained(directory)
    shutil.copy(fetch("minilm-l6") / "vocab.txt", directory / "vocab.txt")
    return directory


def _export(model: Path, *args: str) -> Path:
    """`bertforge export onnx`, which says one line and nothing else (no exporter chatter); the path it wrote."""
    proc = subprocess.run([str(BERTFORGE), "export", "onnx", "-m", str(model), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "" and proc.stdout.count("\n") == 1 and proc.stdout.startswith("wrote "), (
        proc.stdout + proc.stderr
    )
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
    says = (
        r"--runtime onnx needs the onnx extra: pip install 'bertforge\[onnx\]' \(in a clone: pip install -e "
        r"'.\[onnx\]'\)$"
    )
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

    from bertforge.onnx import WEIGHTS_SHA256, weights_sha256

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
    with pytest.raises(
        BertforgeError, match=f"older than the weights in {model}.*`bertforge export onnx --model {model}`$"
    ):
        load_task(model, runtime="onnx")
    with pytest.raises(
        BertforgeError, match=f"model.int8.onnx is older .*`bertforge export onnx --model {model} --int8`$"
    ):
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
    proc = subprocess.run(
        [
            str(BERTFORGE),
            "embed",
            "-m",
            str(tiny["classify"]),
            "-i",
            str(texts),
            "-o",
            str(tmp_path / "e.npy"),
            "--runtime",
            "onnx",
        ],
        capture_output=True,
        text=True,
    )
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
        proc = subprocess.run(
            [
                str(BERTFORGE),
                "embed",
                "-m",
                str(tiny["encoder"]),
                "-i",
                str(long),
                "-o",
                str(tmp_path / "e.npy"),
                "--max-length",
                "100000",
                "--runtime",
                runtime,
            ],
            capture_output=True,
            text=True,
        )
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
    for bad, says in (
        (Path("/proc/m.onnx"), "/proc/m.onnx: cannot write in /proc"),
        (tmp_path / "a-file" / "m.onnx", f"{tmp_path / 'a-file'} is a file, not a directory"),
        (tmp_path / "a-file", f"{tmp_path / 'a-file'}: is a file, not a directory"),
    ):  # never overwritten
        proc = subprocess.run(
            [str(BERTFORGE), "export", "onnx", "-m", str(tiny["encoder"]), "--out", str(bad)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and proc.stderr.startswith(f"bertforge: error: {bad}"), proc.stderr[-2000:]
        assert says in proc.stderr and proc.stderr.count("\n") == 1
    assert (tmp_path / "a-file").read_text(encoding="utf-8") == "keep me"


def test_export_onnx_names_the_models_it_exports(tiny, tmp_path):
    """The tasks whose heads export (from the code) are the ones `--help` and the error name."""
    import json

    from bertforge.onnx import EXPORTABLE_HEADS
    from bertforge.tasks import TASKS

    assert [t for t, task in TASKS.items() if task.head in EXPORTABLE_HEADS] == [
        "classify",
        "pair",
        "regress",
        "tag",
        "qa",
        "embed",
        "rerank",
    ]
    proc = subprocess.run([str(BERTFORGE), "export", "onnx", "--help"], capture_output=True, text=True)
    assert "Export an encoder, or a classify, pair, regress, tag or qa model (not extsum)" in " ".join(
        proc.stdout.split()
    )
    model = _copy(tiny["encoder"], tmp_path / "extsum")
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps({**config, "bertforge": {"task": "extsum"}}), encoding="utf-8")
    proc = subprocess.run([str(BERTFORGE), "export", "onnx", "-m", str(model)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"bertforge: error: {model}: an extsum model cannot be exported to ONNX "
        "(encoder, classify, pair, regress, tag, qa, embed, rerank can)\n"
    )
