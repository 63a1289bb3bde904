"""The GPU checks, in one short script for a CUDA machine (CI has none; the test suite covers the CPU).

1. parity: the encoder and every head against transformers on the GPU in fp32 (TF32 off), dense and
   unpadded, sdpa against sdpa and math against eager: the largest difference of each;
2. precision: minilm-l6 sentence embeddings on the GPU at fp32, bf16 and fp16 (eager, and bf16
   compiled) against transformers' fp32 on the CPU: the lowest cosine over the texts;
3. batch budget: our inference path's seq/s on the GPU at several ``max_tokens`` (the default's choice).

Prints one line per check and ends with the failures' count (exit status 1 if any; 2 for a usage
error, and where PyTorch sees no GPU).

    python benchmarks/cuda_check.py                 # all three, about a minute on an H200
    python benchmarks/cuda_check.py --texts 8192    # more texts for the cosines and the sweep
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import torch
import transformers
from common import Listed, argument_parser

import bertforge
from bertforge.assets import fetch
from bertforge.families import BERT
from bertforge.infer import Embedder, embed
from bertforge.precision import prepare

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
TINY = dict(
    vocab_size=300,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    type_vocab_size=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
LENGTHS = [17, 5, 11, 1, 17, 2]
failures: list[str] = []


def report(name: str, value: float, limit: float, higher_is_better: bool = False) -> None:
    ok = value >= limit if higher_is_better else value <= limit
    if not ok:
        failures.append(name)
    print(
        f"{'ok  ' if ok else 'FAIL'} {name:58} {value:.3g} ({'>=' if higher_is_better else '<='} {limit:g})", flush=True
    )


def batch(device: torch.device, choices: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    T = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        ids[i, :n] = torch.randint(1, TINY["vocab_size"], (n,), generator=g)
        mask[i, :n] = 1
    types = (torch.rand(ids.shape, generator=g) < 0.5).long() * mask
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if choices:  # (B, C, T): the same rows shifted per choice
        out = {k: torch.stack([v.roll(c, 0) for c in range(choices)], 1) for k, v in out.items()}
    return {k: v.to(device) for k, v in out.items()}


# the outputs compared per head: (ours, transformers') attribute names; other heads: logits
OUTPUTS = {
    None: (("last_hidden_state", "pooler_output"), ("last_hidden_state", "pooler_output")),
    "pretrain": (("logits", "nsp_logits"), ("prediction_logits", "seq_relationship_logits")),
    "span": (("logits", "end_logits"), ("start_logits", "end_logits")),
}


def outputs(head: str | None, out, ours: bool) -> list[torch.Tensor]:
    names = OUTPUTS.get(head, (("logits",), ("logits",)))[0 if ours else 1]
    return [getattr(out, name) for name in names]


def check_parity(device: torch.device, tmp: Path) -> None:
    for head in (None, *BERT.heads):
        if head == "extsum":
            continue  # ours alone: transformers has no such class
        cls_name = BERT.architecture(head)
        for backend, hf_backend in (("sdpa", "sdpa"), ("math", "eager")):
            config = transformers.BertConfig(
                **TINY, num_labels=2 if head == "span" else 3, attn_implementation=hf_backend
            )
            torch.manual_seed(0)
            theirs = getattr(transformers, cls_name)(config).eval()
            with torch.no_grad():  # away from the default init's zeros and ones: every weight matters
                for p in theirs.parameters():
                    p.add_(torch.randn_like(p) * 0.02)
            theirs.save_pretrained(tmp / f"{head}-{backend}")
            theirs.to(device)
            x = batch(device, choices=3 if head == "choice" else 0)
            real = x["attention_mask"].bool()
            with torch.no_grad():
                expected = outputs(head, theirs(**x), ours=False)
                for unpad in (False, True):
                    ours = bertforge.load_pretrained(
                        tmp / f"{head}-{backend}", head=head, attention=backend, unpad=unpad
                    )
                    got = outputs(head, ours.to(device).eval()(**x), ours=True)
                    diff = 0.0
                    for a, b in zip(got, expected, strict=True):
                        if a.shape[:2] == real.shape and head not in ("choice", "classify"):
                            a, b = a[real], b[real]  # token outputs: real tokens (padding is zeros unpadded)
                        diff = max(diff, (a - b).abs().max().item())
                    report(f"parity {cls_name} {backend} {'unpadded' if unpad else 'dense'}", diff, 1e-5)


def load_texts(n: int) -> list[str]:
    with (fetch("rotten-tomatoes") / "test.csv").open(encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    return (texts * (n // len(texts) + 1))[:n]


def hf_embeddings(directory: Path, texts: list[str]) -> torch.Tensor:
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModel.from_pretrained(directory).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            b = tok(texts[i : i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def check_precisions(device: torch.device, texts: list[str]) -> None:
    directory = fetch("minilm-l6")
    reference = hf_embeddings(directory, texts[:1024])
    for precision, limit, compile in (
        ("fp32", 1e-5, False),
        ("bf16", 0.02, False),
        ("fp16", 2e-3, False),
        ("bf16", 0.02, True),
    ):
        embedder = Embedder.from_pretrained(directory, device=str(device), precision=precision, compile=compile)
        t = time.perf_counter()
        v = torch.from_numpy(embedder(texts[:1024], max_length=256))
        seconds = time.perf_counter() - t
        worst = 1 - (v * reference).sum(1).min().item()
        report(
            f"minilm-l6 {precision}{' compiled' if compile else ''}: 1 - lowest cosine to hf fp32 cpu "
            f"({seconds:.1f} s)",
            worst,
            limit,
        )


def sweep(device: torch.device, texts: list[str]) -> None:
    directory = fetch("minilm-l6")
    tok = bertforge.Tokenizer.from_pretrained(directory)
    for name in ("minilm-l6", "base"):
        if name == "minilm-l6":
            model = bertforge.load_pretrained(directory)
        else:
            torch.manual_seed(0)
            model = bertforge.BertModel(bertforge.BertConfig.preset("base", vocab_size=tok.vocab_size))
        for precision in ("bf16", "fp16", "fp32"):
            m = prepare(model, precision, device)
            cells = []
            for max_tokens in (2048, 8192, 16384, 32768, 65536):
                embed(m, tok, texts[:512], max_length=256, max_tokens=max_tokens)  # warm-up
                best = float("inf")
                for _ in range(3):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    embed(m, tok, texts, max_length=256, max_tokens=max_tokens)
                    best = min(best, time.perf_counter() - t)
                cells.append(f"{max_tokens}: {len(texts) / best:,.0f}")
            print(f"sweep {name} {precision} seq/s by max_tokens  " + "  ".join(cells), flush=True)
            model = model.float()


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument(
        "--texts", type=int, default=4096, help="rotten-tomatoes snippets (repeated past the 1,275 of the test split)"
    )
    p.add_argument(
        "--skip",
        action=Listed,
        nargs="*",
        options=("parity", "precision", "sweep"),
        default=[],
        help="checks to leave out",
    )
    args = p.parse_args()
    skip = set(args.skip)
    if not torch.cuda.is_available():
        p.error("PyTorch sees no GPU: this script checks the CUDA path")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}, "
        f"bf16 {torch.cuda.is_bf16_supported()}",
        flush=True,
    )
    texts = load_texts(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (
            ("parity", lambda: check_parity(device, Path(tmp))),
            ("precision", lambda: check_precisions(device, texts)),
            ("sweep", lambda: sweep(device, texts)),
        ):
            if name in skip:
                continue
            try:
                fn()
            except Exception as e:  # one broken check must not hide the others' results
                import traceback

                traceback.print_exc()
                failures.append(f"{name}: {type(e).__name__}: {e}")
    print(f"{len(failures)} failure(s)" + (": " + "; ".join(failures) if failures else ""))
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
