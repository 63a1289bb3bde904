"""Inference throughput: bertforge's inference path against transformers used as its docs show.

Same texts, given in their natural order (rotten-tomatoes snippets, wiki-topics-en extracts, long aclsum passages),
same weights, same precision. transformers: ``tokenizer(batch, padding=True, truncation=True)`` and
``model(**batch)`` with sdpa attention, batches of 32 in the order given. bertforge: the one
inference path (batch tokenization, length-sorted batches under a token budget, the caller's order
restored). Both end at the encoder's hidden states (bertforge also mean-pools: the sentence
embedding a user asks for). int8 on both is ``precision.quantize_int8``: PyTorch's dynamic quantization
of the linear layers with the same kernels (oneDNN's AMX ones where the CPU has them); ours is also
smoothed, which costs one multiply per layer.

Prints seq/s and real (non-padding) tokens/s, the ratios, the work ratio (transformers' FLOPs on its
padded batches over the FLOPs of the real tokens: what skipping padding alone is worth), and
bertforge's real-token FLOP/s as a fraction of the limit (a plain matmul, or for fp32 on a CPU the
better of it and oneDNN's on the same shape, measured in the same run at the same precision), and
beside it the fraction the model's own linear layers reach alone (its ceiling where attention,
LayerNorm and the adds would cost nothing). ``--busy N`` keeps N cores busy meanwhile.

    python benchmarks/infer.py                          # minilm-l6 and a random `base`, fp32/bf16/int8
    python benchmarks/infer.py --models minilm-l6 --precisions fp32 --texts 512
    python benchmarks/infer.py --models roberta:base distilbert:L6-H768 --texts 256   # other families
    python benchmarks/infer.py --models minilm-l6 --compile   # ours compiled (first pass compiles: ~30 s)
    python benchmarks/infer.py --device cuda --precisions fp32,bf16,fp16 --texts 8192   # on a GPU (TF32 off)
"""

from __future__ import annotations

import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import Listed, add_busy, argument_parser, busy, machine

from bertforge import BertConfig, BertforgeError, BertModel, Tokenizer, save_pretrained
from bertforge.assets import fetch
from bertforge.device import pick_device
from bertforge.infer import embed
from bertforge.precision import prepare, quantize_int8


def load_texts(n: int) -> dict[str, list[str]]:
    with (fetch("rotten-tomatoes") / "test.csv").open(encoding="utf-8") as f:
        rt = [r["text"] for r in csv.DictReader(f)][:n]
    wiki = [json.loads(x)["text"] for x in (fetch("wiki-topics-en") / "test.jsonl").read_text().splitlines()][: n // 2]
    return {"rotten-tomatoes": rt, "wiki-topics-en": wiki, "aclsum-passages": long_passages(n // 4)}


def long_passages(n: int, words: int = 200) -> list[str]:
    """``n`` long texts (no mail corpus ships in a package here): ACL papers' introductions and
    conclusions (aclsum), cut at sentence ends into passages of about ``words`` words (~256 pieces)."""
    out: list[str] = []
    for line in (fetch("aclsum") / "train.jsonl").read_text().splitlines():
        sentences = json.loads(line)["sentences"]
        passage: list[str] = []
        for sentence in sentences["introduction"] + sentences["conclusion"]:
            passage.append(sentence)
            if sum(len(x.split()) for x in passage) >= words:
                out.append(" ".join(passage))
                passage = []
        if len(out) >= n:
            break
    return out[:n]


def model_dir(name: str, tmp: Path) -> Path:
    if name == "minilm-l6":
        return fetch("minilm-l6")
    # a randomly initialised model of a preset size (FAMILY:PRESET for another family: roberta:base),
    # with minilm-l6's (bert-base-uncased) vocabulary
    tok = Tokenizer.from_pretrained(fetch("minilm-l6"))
    torch.manual_seed(0)
    family, _, preset = name.rpartition(":")
    config = BertConfig.preset(preset, model_type=family or "bert").with_vocab(tok.vocab_size, tok.pad_id)
    return save_pretrained(BertModel(config), tmp / name.replace(":", "-"), tokenizer=tok)


def real_flops(config: BertConfig, lengths: list[int]) -> float:
    """Multiply-adds x 2 of the encoder on real tokens: projections and feed-forward, plus attention."""
    H, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 2 * (4 * H * H + 2 * H * inter)
    return float(layers * sum(per_token * n + 4 * n * n * H for n in lengths))


def padded_flops(config: BertConfig, lengths: list[int], batch_size: int) -> float:
    """What transformers computes: every text of a batch of ``batch_size`` (in the order given) padded
    to the batch's longest. Divided by ``real_flops`` it bounds the speed-up that skipping padding
    alone can give where both sides run their matmuls at the same rate."""
    return sum(
        real_flops(config, [max(lengths[i : i + batch_size])] * len(lengths[i : i + batch_size]))
        for i in range(0, len(lengths), batch_size)
    )


class BestRate:
    """The best FLOP/s ``work`` reaches, kept over every call: called in the same rotation as the two
    sides (``timed``), a few times a turn, so that a rate measured once, before or after, cannot land in a
    slow spell of this shared machine (one once read a third of the bf16 rate) and flatter the fraction."""

    def __init__(self, flops: float, device: torch.device, times: int):
        self.flops, self.device, self.times, self.best = flops, device, times, 0.0

    def work(self) -> None:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self) -> None:
        for _ in range(self.times):
            t = time.perf_counter()
            self.work()
            synchronize(self.device)
            self.best = max(self.best, self.flops / (time.perf_counter() - t))


class MatmulPeak(BestRate):
    """A plain (M x H) @ (H x 4H) matmul, the feed-forward's shape at a large batch (M = 4096 tokens on
    a CPU, 65536 on a GPU), five a turn."""

    def __init__(self, dtype: torch.dtype, H: int, inter: int, device: torch.device):
        M = 4096 if device.type == "cpu" else 65536
        self.a, self.b = torch.randn(M, H, device=device).to(dtype), torch.randn(H, inter, device=device).to(dtype)
        super().__init__(2 * M * H * inter, device, times=5)

    def work(self) -> None:
        self.a @ self.b


class OneDnnPeak(BestRate):
    """The same product as ``MatmulPeak`` through oneDNN on packed weights (fp32 on a CPU): on some
    CPUs it is the faster one, and the fp32 limit is the better of the two."""

    def __init__(self, H: int, inter: int):
        M = 4096
        self.a = torch.randn(M, H)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(torch.randn(inter, H), M)
        super().__init__(2 * M * H * inter, torch.device("cpu"), times=5)

    def work(self) -> None:
        torch.ops.mkldnn._linear_pointwise(self.a, self.packed, None, "none", [], "")


class LinearCeiling(BestRate):
    """The model's own four linear layers (q/k/v, output, feed-forward up with its activation, down) run
    alone on a (2048 x H) input, as the prepared model runs them (bf16: the fused, packed oneDNN calls),
    three times a turn: what the encoder would reach if attention, LayerNorm and the residual adds cost
    nothing, so a ceiling for "of matmul"."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, device: torch.device):
        layer = next(m for m in model.modules() if isinstance(m, BertModel)).layers[0]
        ffn = layer.ffn
        self.steps = [layer.attn.qkv, layer.attn.out, lambda x: ffn.act(ffn.up(x)), ffn.down]
        H, inter = ffn.up.in_features, ffn.up.out_features
        self.inputs = [torch.randn(2048, n, device=device).to(dtype) for n in (H, H, H, inter)]
        super().__init__(2 * 2048 * (4 * H * H + 2 * H * inter), device, times=3)

    def work(self) -> None:
        for step, x in zip(self.steps, self.inputs, strict=True):
            step(x)


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so that a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns, repeats: int) -> list[float]:
    """Median seconds of each function, run in turns (a, b, a, b, ...) so that a slow spell of the
    machine falls on both sides alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument(
        "--models",
        action=Listed,
        default=["minilm-l6", "base"],
        help="minilm-l6 and/or preset names (random weights), FAMILY:PRESET for another family "
        "(roberta:base, distilbert:L6-H768)",
    )
    p.add_argument(
        "--precisions",
        action=Listed,
        options=("fp32", "bf16", "int8", "fp16"),
        default=["fp32", "bf16", "int8"],
        help="int8 on the CPU, fp16 on a GPU",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (TF32 stays off: fp32 is fp32 on both sides)")
    p.add_argument(
        "--texts",
        type=int,
        default=1024,
        help="rotten-tomatoes snippets (half as many wiki extracts, a quarter as many long passages)",
    )
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens (both sides)")
    p.add_argument("--batch-size", type=int, default=32, help="transformers' batch size")
    p.add_argument(
        "--max-tokens", type=int, default=None, help="bertforge's padded tokens per batch (default: the library's)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed passes per side and text set (the median is kept)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="run ours through torch.compile (transformers stays eager, as its docs show)",
    )
    add_busy(p)
    args = p.parse_args()
    from transformers import AutoModel, AutoTokenizer

    try:
        device = pick_device(args.device)
    except BertforgeError as e:
        p.error(str(e))
    corpora = load_texts(args.texts)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; texts as given, max length {args.max_length}; {args.busy} cores busy")
    if device.type == "cpu":
        print(machine())
    header = (
        f"{'model':10} {'prec':7} {'texts':16} {'n':>5} {'real tok':>9} {'hf seq/s':>9} {'ours seq/s':>10} "
        f"{'ours tok/s':>10} {'ratio':>6} {'work':>6} {'GFLOP/s':>8} {'of matmul':>9} {'linear alone':>12}"
    )
    print(header)
    results = []
    with tempfile.TemporaryDirectory() as tmp, busy(args.busy):
        for name in args.models:
            directory = model_dir(name, Path(tmp))
            config = BertConfig.from_json(directory / "config.json")
            hf_tok = AutoTokenizer.from_pretrained(directory)
            tok = Tokenizer.from_pretrained(directory)
            for precision in args.precisions:
                from bertforge import load_pretrained

                ours = prepare(load_pretrained(directory), precision, device, compile=args.compile)
                hf = AutoModel.from_pretrained(directory, attn_implementation="sdpa").eval().to(device)
                dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
                hf = quantize_int8(hf) if precision == "int8" else hf.to(dtype)
                peak = MatmulPeak(dtype, config.hidden_size, config.intermediate_size, device)
                peaks = [peak]
                if precision == "fp32" and device.type == "cpu":
                    peaks.append(OneDnnPeak(config.hidden_size, config.intermediate_size))
                ceiling = LinearCeiling(ours, dtype, device) if precision != "int8" else None
                for corpus, texts in corpora.items():
                    lengths = [len(e.ids) for e in tok.encode_batch(texts, max_length=args.max_length)]

                    def run_hf(texts=texts, hf=hf, hf_tok=hf_tok):
                        with torch.inference_mode():
                            for i in range(0, len(texts), args.batch_size):
                                batch = hf_tok(
                                    texts[i : i + args.batch_size],
                                    padding=True,
                                    truncation=True,
                                    max_length=args.max_length,
                                    return_tensors="pt",
                                )
                                hf(**batch.to(device))
                        synchronize(device)

                    def run_ours(texts=texts, ours=ours, tok=tok):
                        kw = {"max_tokens": args.max_tokens} if args.max_tokens else {}
                        embed(ours, tok, texts, max_length=args.max_length, **kw)

                    t_hf, t_ours, *_ = timed([run_hf, run_ours, *peaks] + ([ceiling] if ceiling else []), args.repeats)
                    flops = real_flops(config, lengths) / t_ours
                    limit = max(p.best for p in peaks)
                    row = {
                        "model": name,
                        "precision": precision + ("+c" if args.compile else ""),
                        "texts": corpus,
                        "n": len(texts),
                        "real_tokens": sum(lengths),
                        "hf_seq_s": len(texts) / t_hf,
                        "ours_seq_s": len(texts) / t_ours,
                        "ours_tok_s": sum(lengths) / t_ours,
                        "ratio": t_hf / t_ours,
                        "gflops": flops / 1e9,
                        "work": padded_flops(config, lengths, args.batch_size) / real_flops(config, lengths),
                        "of_matmul": flops / limit if ceiling else float("nan"),
                        "ceiling": ceiling.best / limit if ceiling else float("nan"),
                    }
                    results.append(row)
                    print(
                        f"{name:10} {row['precision']:7} {corpus:16} {row['n']:>5} {row['real_tokens']:>9} "
                        f"{row['hf_seq_s']:>9.1f} "
                        f"{row['ours_seq_s']:>10.1f} {row['ours_tok_s']:>10.0f} {row['ratio']:>5.2f}x "
                        f"{row['work']:>5.2f}x {row['gflops']:>8.0f} "
                        f"{row['of_matmul']:>8.0%} {row['ceiling']:>11.0%}",
                        flush=True,
                    )
    fp32 = {(r["model"], r["texts"]): r["ours_seq_s"] for r in results if r["precision"].startswith("fp32")}
    for r in results:
        if not r["precision"].startswith("fp32") and (r["model"], r["texts"]) in fp32:
            print(
                f"ours {r['precision']} / ours fp32, {r['model']}, {r['texts']}: "
                f"{r['ours_seq_s'] / fp32[(r['model'], r['texts'])]:.2f}x"
            )


if __name__ == "__main__":
    main()
