"""ONNX: export a model to a graph with dynamic batch and length, and run such a graph under
onnxruntime with the same call and outputs as the PyTorch model (``OnnxModel``)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import BertforgeError, missing_extra
from .heads import BertWithHead, HeadOutput
from .model import BertModel, EncoderOutput
from .outputs import check_output, sha256

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
        if isinstance(out, EncoderOutput):  # (DistilBERT and ELECTRA have no pooler)
            return tuple(t for t in (out.last_hidden_state, out.pooler_output) if t is not None)
        if out.end_logits is not None:
            return out.logits, out.end_logits
        return (out.logits,)


def output_names(head: str | None, pooler: bool = True) -> list[str]:
    return [name for name in GRAPH_OUTPUTS[head] if pooler or name != "pooler_output"]


def weights_sha256(directory: str | Path) -> str | None:
    """sha256 of the weight files ``checkpoint.read_weights`` reads in a directory (None: there are none)."""
    from .checkpoint import weight_files

    files = weight_files(Path(directory))
    if not files:
        return None
    return sha256(*files)


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


def export_onnx(
    model: BertModel | BertWithHead, path: str | Path, int8: bool = False, source: str | Path | None = None
) -> Path:
    """An ONNX graph with dynamic batch and length; ``int8`` quantizes its linear layers (onnxruntime).
    The graph records the sha256 of the weights in ``source`` (the model's directory), so that loading it
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
    weights = weights_sha256(source) if source is not None else None
    encoder = model.bert if isinstance(model, BertWithHead) else model
    was_unpad = encoder.unpad
    encoder.unpad = False  # the dense path has no data-dependent branches
    model.eval()
    graph = _Graph(model).eval()  # (a wrapper left in training mode would put the model back in it)
    example = (torch.full((2, 8), 100), torch.ones(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=model.config.max_length)
    fp32_path = path.with_name(path.stem + ".fp32.onnx") if int8 else path
    try:
        with _quiet():
            program = torch.onnx.export(
                graph,
                example,
                input_names=list(INPUTS),
                output_names=output_names(head, encoder.pooler is not None),
                dynamic_shapes=({0: batch, 1: seq},) * 3,
                dynamo=True,
                opset_version=18,
                verbose=False,
            )
            if weights is not None:
                program.model.metadata_props[WEIGHTS_SHA256] = weights  # (quantize_dynamic keeps it)
            program.save(str(fp32_path))
            if int8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                # the linear layers only, as in PyTorch int8: quantizing the embedding tables (Gather) as well
                # costs accuracy for no speed
                quantize_dynamic(
                    str(fp32_path),
                    str(path),
                    weight_type=QuantType.QInt8,
                    per_channel=True,
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

    def __init__(
        self,
        path: str | Path,
        config,
        head: str | None,
        threads: int | None = None,
        source: str | Path | None = None,
        int8: bool = False,
    ):
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
        if ranks == {"last_hidden_state": 3}:  # an encoder without a pooler
            found = None
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
                "against %s's; %s to have it checked",
                path,
                source,
                export,
            )
        elif weights is not None and recorded != weights:
            raise BertforgeError(
                f"{path} is older than the weights in {source} (exported from other weights); {export}"
            )

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, **_: Any):
        self.config.check_length(input_ids.shape[1])  # (as BertModel does)
        feed = {
            "input_ids": input_ids.numpy(),
            "attention_mask": (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).numpy(),
            "token_type_ids": (token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)).numpy(),
        }
        out = dict(
            zip(self.outputs, (torch.from_numpy(np.asarray(a)) for a in self.session.run(None, feed)), strict=True)
        )
        if self.head_name is None:
            return EncoderOutput(out["last_hidden_state"], out.get("pooler_output"))
        return HeadOutput(out["logits"], end_logits=out.get("end_logits"))
