"""Pretraining steps: bertforge's MLM + NSP model against transformers' ``BertForPreTraining``, and
bertforge's ELECTRA pair against transformers' ``ElectraForMaskedLM`` generator and
``ElectraForPreTraining`` discriminator, joined by hand as users do (shared embeddings, Gumbel samples
from the generator's logits, loss = generator MLM + 50 x discriminator BCE).

The same randomly initialised weights (ours saved, transformers loads them), the same batches (random
token ids of the bert-base vocabulary, 15% of positions masked with labels, NSP labels, lengths drawn
from 50-100% of ``--seq-len`` and right-padded, as pretraining shards are), the same AdamW (fused),
one process, in turns: per shape and precision, each side runs ``--steps`` optimizer steps after
``--warmup`` untimed ones. Prints sequences/s and the ratio ours / transformers; bf16 is autocast on
both sides.

    python benchmarks/pretrain.py                                    # mini, minilm and base shapes
    python benchmarks/pretrain.py --objectives electra --shapes mini  # ELECTRA: 128-wide embeddings, 1/4 generator
    python benchmarks/pretrain.py --shapes base --precisions fp32 --busy 1
    BERTFORGE_KERNELS=default python benchmarks/pretrain.py    # ours on PyTorch's products only (before)
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import Listed, add_busy, argument_parser, busy, machine

from bertforge import BertConfig, BertWithHead, load_pretrained, save_pretrained
from bertforge.assets import fetch
from bertforge.electra import ElectraPretrainer, gumbel_sample, replaced_labels
from bertforge.precision import train_linears

SHAPES = {"mini": "mini", "minilm": None, "base": "base"}  # None: minilm-l6's own config
OBJECTIVES = ("mlm+nsp", "electra")


def config_of(shape: str, objective: str = "mlm+nsp") -> BertConfig:
    if SHAPES[shape] is None:
        config = BertConfig.from_json(fetch("minilm-l6") / "config.json")
    else:
        config = BertConfig.preset(SHAPES[shape], vocab_size=30522)
    if objective == "electra":  # ELECTRA's shapes: 128-wide embeddings below base, as wide as hidden at base
        return config.replace(model_type="electra", embedding_size=128 if config.hidden_size < 768 else 768)
    return config


def generator_size(config: BertConfig) -> float:
    return 1 / 3 if config.hidden_size >= 768 else 0.25  # the paper's: 1/4 for small, 1/3 for base


def batches(config: BertConfig, n: int, size: int, seq_len: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(seq_len // 2, seq_len + 1, (size,), generator=g)
        ids = torch.randint(1000, config.vocab_size, (size, seq_len), generator=g)
        mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        ids = ids * mask
        ids[:, 0] = 101
        labels = torch.full_like(ids, -100)
        picked = (torch.rand(size, seq_len, generator=g) < 0.15) & mask.bool()
        picked[:, 0] = False
        labels[picked] = ids[picked]
        ids = ids.masked_fill(picked, 103)
        types = torch.zeros_like(ids)
        nsp = torch.randint(0, 2, (size,), generator=g)
        out.append({"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels,
                    "next_sentence_label": nsp})  # fmt: skip
    return out


def step_fn(model: torch.nn.Module, ours: bool, precision: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(batch: dict[str, torch.Tensor]) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(**batch, only_masked=True) if ours else model(**batch)
            loss = out.mlm_loss + out.nsp_loss if ours else out.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def electra_step_fn(pair, ours: bool, precision: str):
    """One ELECTRA step; ``pair`` is ours (an ElectraPretrainer) or (generator, discriminator) from transformers."""
    params = pair.parameters() if ours else {id(p): p for m in pair for p in m.parameters()}.values()
    optimizer = torch.optim.AdamW(list(params), lr=1e-4, fused=True)

    def step(batch: dict[str, torch.Tensor]) -> float:
        batch = {k: v for k, v in batch.items() if k != "next_sentence_label"}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if ours:
                out = pair(**batch)
                loss = out.generator_loss + 50.0 * out.discriminator_loss
            else:
                loss = hf_electra_loss(*pair, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def hf_electra_loss(generator, discriminator, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ELECTRA loss with transformers' classes, as a user writes it."""
    labels, mask = batch["labels"], batch["attention_mask"]
    gen = generator(batch["input_ids"], mask, batch["token_type_ids"], labels=labels)
    masked = labels != -100
    with torch.no_grad():
        sampled = gumbel_sample(gen.logits[masked].detach())
    original = torch.where(masked, labels, batch["input_ids"])
    corrupted = original.masked_scatter(masked, sampled)
    replaced = replaced_labels(corrupted, original, mask).clamp_min(0)  # (transformers masks padding itself)
    disc = discriminator(corrupted, mask, batch["token_type_ids"], labels=replaced)
    return gen.loss + 50.0 * disc.loss


def electra_sides(directory: Path, precision: str, first: dict[str, torch.Tensor]) -> list:
    """Our step and transformers' on the same saved pair (its generator's embeddings tied by hand), after
    checking that both compute the same loss on ``first`` (dropout off, the same Gumbel draws)."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    ours = ElectraPretrainer.load(directory).train()
    train_linears(ours)  # the kernels `pretrain` runs on
    disc = ElectraForPreTraining.from_pretrained(directory, attn_implementation="sdpa").train()
    gen = ElectraForMaskedLM.from_pretrained(directory / "generator", attn_implementation="sdpa").train()
    gen.electra.embeddings = disc.electra.embeddings  # shared token, position and segment embeddings
    gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
    same_loss(gen, disc, ours, {k: v for k, v in first.items() if k != "next_sentence_label"})
    return [electra_step_fn((gen, disc), False, precision), electra_step_fn(ours, True, precision)]


def same_loss(gen, disc, ours: ElectraPretrainer, batch: dict[str, torch.Tensor]) -> None:
    """Stop unless both sides' ELECTRA losses agree on ``batch`` (dropout off, the same Gumbel draws)."""
    modules = (gen, disc, ours)
    for m in modules:
        m.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        theirs = float(hf_electra_loss(gen, disc, batch))
        torch.manual_seed(0)
        out = ours(**batch)
        mine = float(out.generator_loss + 50.0 * out.discriminator_loss)
    for m in modules:
        m.train()
    if abs(theirs - mine) > 1e-4 * max(1.0, abs(theirs)):
        raise SystemExit(f"the ELECTRA steps compute different losses: transformers {theirs}, ours {mine}")


def in_turns(steps: list, data: list[dict], warmup: int) -> list[float]:
    """Median seconds per step of each side, the sides alternating batch by batch after ``warmup`` steps
    (a slow spell of the machine falls on both alike)."""
    for b in data[:warmup]:
        for step in steps:
            step(b)
    times: list[list[float]] = [[] for _ in steps]
    for b in data[warmup:]:
        for step, ts in zip(steps, times, strict=True):
            t = time.perf_counter()
            step(b)
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument("--shapes", action=Listed, options=tuple(SHAPES), default=list(SHAPES), help="model shapes")
    p.add_argument(
        "--precisions", action=Listed, options=("fp32", "bf16"), default=["fp32", "bf16"], help="bf16: autocast"
    )
    p.add_argument("--objectives", action=Listed, options=OBJECTIVES, default=list(OBJECTIVES), help="objectives")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=128, help="longest sequence")
    p.add_argument("--steps", type=int, default=8, help="timed steps per side (the median is kept)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    add_busy(p)
    args = p.parse_args()
    from transformers import BertForPreTraining

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.busy} cores busy")
    print(machine())
    print(f"{'objective':9} {'shape':7} {'prec':5} {'hf seq/s':>9} {'ours seq/s':>10} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp, busy(args.busy):
        for objective, shape in ((o, s) for o in args.objectives for s in args.shapes):
            config = config_of(shape, objective)
            torch.manual_seed(0)
            directory = Path(tmp) / f"{objective}-{shape}"
            if objective == "electra":
                ElectraPretrainer.new(config, generator_size(config)).save(directory)
            else:
                save_pretrained(BertWithHead(config, "pretrain"), directory)
            data = batches(config, args.warmup + args.steps, args.batch_size, args.seq_len)
            for precision in args.precisions:
                if objective == "electra":
                    sides = electra_sides(directory, precision, data[0])
                else:
                    ours = load_pretrained(directory, head="pretrain").train()
                    train_linears(ours)  # the kernels `pretrain` runs on
                    hf = BertForPreTraining.from_pretrained(directory, attn_implementation="sdpa").train()
                    sides = [step_fn(hf, False, precision), step_fn(ours, True, precision)]
                t_hf, t_ours = in_turns(sides, data, args.warmup)
                print(
                    f"{objective:9} {shape:7} {precision:5} {args.batch_size / t_hf:>9.1f} "
                    f"{args.batch_size / t_ours:>10.1f} {t_hf / t_ours:>5.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
