"""bertforge against the inference engines people pick instead: CTranslate2 and ONNX Runtime.

One process, one checkpoint (minilm-l6), the same texts in their natural order (rotten-tomatoes
snippets, wiki-topics-en extracts, ~250-piece aclsum passages), every engine timed in turns (median
of --repeats). Each runs as its documentation shows:

  transformers  tokenizer(batch of 32, padding=True, truncation=True), AutoModel with sdpa: the baseline
  ctranslate2   the converted model (TransformersConverter), Encoder.forward_batch on batches of 32 token
                id lists, compute_type float32 / int8 (bfloat16 where CTranslate2 supports it on this CPU)
  onnxruntime   `bertforge export onnx` graphs (fp32, --int8) on the CPU provider, through bertforge's
                length-sorted batching (`--runtime onnx`)
  bertforge     the one inference path at fp32 / int8 / bf16

All end at the encoder's last hidden state (bertforge also mean-pools). Prints texts/s and the ratio
to transformers fp32, and each engine's worst cosine of mean-pooled embeddings to transformers fp32.

    pip install ctranslate2 transformers onnx onnxruntime onnxscript   # or: pip install -e '.[bench]'
    python benchmarks/engines.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_busy, argument_parser, busy, machine  # noqa: E402
from infer import load_texts  # noqa: E402  (benchmarks/infer.py: the same texts)

from bertforge import Tokenizer, load_pretrained  # noqa: E402
from bertforge.assets import fetch  # noqa: E402
from bertforge.config import BertConfig  # noqa: E402
from bertforge.device import native_bf16  # noqa: E402
from bertforge.infer import embed  # noqa: E402
from bertforge.onnx import OnnxModel, export_onnx  # noqa: E402
from bertforge.precision import prepare  # noqa: E402


def mean_pool(hidden: np.ndarray, lengths: list[int]) -> np.ndarray:
    v = np.stack([h[:n].mean(0) for h, n in zip(hidden, lengths, strict=True)])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument(
        "--texts",
        type=int,
        default=1024,
        help="rotten-tomatoes snippets (half as many wiki extracts, a quarter as many long passages)",
    )
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of transformers and ctranslate2")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per engine and text set (the median is kept)")
    add_busy(p)
    args = p.parse_args()
    try:
        import ctranslate2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        sys.exit(f"error: this benchmark needs {e.name}: pip install -e '.[bench]'")

    directory = fetch("minilm-l6")
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, ctranslate2 {ctranslate2.__version__}, {threads} threads; minilm-l6, texts as "
        f"given; {args.busy} cores busy"
    )
    print(machine())
    hf_tok = AutoTokenizer.from_pretrained(directory)
    hf = AutoModel.from_pretrained(directory, attn_implementation="sdpa").eval()
    tok = Tokenizer.from_pretrained(directory)
    config = BertConfig.from_json(directory / "config.json")
    with tempfile.TemporaryDirectory() as tmp, busy(args.busy):
        ct2_dir = Path(tmp) / "ct2"
        ctranslate2.converters.TransformersConverter(str(directory)).convert(str(ct2_dir), quantization=None)
        export_onnx(load_pretrained(directory), Path(tmp) / "model.onnx", source=directory)
        export_onnx(load_pretrained(directory), Path(tmp) / "model.int8.onnx", int8=True, source=directory)

        def hf_run(texts):
            out = []
            with torch.inference_mode():
                for i in range(0, len(texts), args.batch_size):
                    b = hf_tok(
                        texts[i : i + args.batch_size],
                        padding=True,
                        truncation=True,
                        max_length=args.max_length,
                        return_tensors="pt",
                    )
                    h = hf(**b).last_hidden_state.numpy()
                    out.append(mean_pool(h, b["attention_mask"].sum(1).tolist()))
            return np.concatenate(out)

        def ct2_run(encoder):
            def run(texts):
                out = []
                for i in range(0, len(texts), args.batch_size):
                    ids = hf_tok(texts[i : i + args.batch_size], truncation=True, max_length=args.max_length)[
                        "input_ids"
                    ]
                    h = np.asarray(encoder.forward_batch(ids).last_hidden_state)
                    out.append(mean_pool(h, [len(x) for x in ids]))
                return np.concatenate(out)

            return run

        def ours_run(model):
            return lambda texts: embed(model, tok, texts, max_length=args.max_length)

        engines = {"transformers fp32": hf_run}
        ct2_types = ["float32", "int8"] + (
            ["bfloat16"] if "bfloat16" in ctranslate2.get_supported_compute_types("cpu") else []
        )
        for ct in ct2_types:
            engines[f"ctranslate2 {ct}"] = ct2_run(
                ctranslate2.Encoder(str(ct2_dir), device="cpu", compute_type=ct, intra_threads=threads)
            )
        engines["onnxruntime fp32"] = ours_run(OnnxModel(Path(tmp) / "model.onnx", config, None, threads))
        engines["onnxruntime int8"] = ours_run(
            OnnxModel(Path(tmp) / "model.int8.onnx", config, None, threads, int8=True)
        )
        for precision in ("fp32", "int8") + (("bf16",) if native_bf16(torch.device("cpu")) else ()):
            engines[f"bertforge {precision}"] = ours_run(prepare(load_pretrained(directory), precision))

        for corpus, texts in load_texts(args.texts).items():
            reference = hf_run(texts)
            cosines = {
                name: float((run(texts) * reference).sum(1).min()) for name, run in engines.items()
            }  # and warm-up
            times: dict[str, list[float]] = {name: [] for name in engines}
            for _ in range(args.repeats):
                for name, run in engines.items():
                    t = time.perf_counter()
                    run(texts)
                    times[name].append(time.perf_counter() - t)
            base = statistics.median(times["transformers fp32"])
            print(
                f"\n{corpus} ({len(texts)} texts)\n{'engine':20} {'texts/s':>8} {'vs transformers':>15} "
                f"{'worst cosine':>12}"
            )
            for name, ts in times.items():
                t = statistics.median(ts)
                print(f"{name:20} {len(texts) / t:>8.1f} {base / t:>14.2f}x {cosines[name]:>12.4f}")


if __name__ == "__main__":
    main()
