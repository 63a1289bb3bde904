"""Pretraining as a task for the training loop: masked language modelling, plus next-sentence
prediction when the shards have it, or ELECTRA's replaced-token detection (``ElectraPretrainTask``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.shards import PretrainShards
from ..electra import DISCRIMINATOR_WEIGHT
from ..errors import BertforgeError
from ..heads import IGNORE_INDEX
from ..tokenizer import Tokenizer

EVAL_LIMIT = 4096  # held-out instances scored per evaluation: enough for stable numbers, cheap on a CPU
OBJECTIVES = ("mlm", "mlm+nsp", "electra")


def objective_of(manifest: dict, objective: str | None) -> str:
    """The objective to train (None: mlm+nsp on shards of sentence pairs, else mlm); mlm+nsp needs pairs."""
    pairs = bool(manifest["nsp"])
    if objective is None:
        return "mlm+nsp" if pairs else "mlm"
    if objective not in OBJECTIVES:
        raise BertforgeError(f"unknown objective {objective!r} (choose from {', '.join(OBJECTIVES)})")
    if objective == "mlm+nsp" and not pairs:
        raise BertforgeError("mlm+nsp needs shards of sentence pairs: prepare them without --no-nsp")
    return objective


class PretrainTask:
    def __init__(self, data: str | Path, tokenizer: Tokenizer, eval_batch_size: int = 64, nsp: bool = True):
        self.train_data = PretrainShards(data, "train")
        self.eval_data = PretrainShards(data, "eval")
        self.nsp = nsp and bool(self.train_data.manifest["nsp"])  # (nsp=False: MLM alone, pairs or not)
        self.head = "pretrain" if self.nsp else "mlm"
        self.tokenizer = tokenizer
        self.eval_batch_size = eval_batch_size

    def num_train(self) -> int:
        return len(self.train_data)

    def size(self, index: int) -> tuple[int, int]:
        return 1, self.train_data.length(index)

    def collate(self, indices: list[int], rng: np.random.Generator) -> dict[str, Tensor]:
        return self.train_data.collate(indices, rng)

    def counts(self, batch: dict[str, Tensor]) -> dict[str, int]:
        counts = {"mlm": int((batch["labels"] != IGNORE_INDEX).sum())}
        if self.nsp:
            counts["nsp"] = int(batch["input_ids"].size(0))
        return counts

    def losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = model(**batch, only_masked=True)  # vocabulary logits at masked positions only
        return {"mlm": out.mlm_loss, "nsp": out.nsp_loss} if self.nsp else {"mlm": out.mlm_loss}

    def tokens(self, batch: dict[str, Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out MLM loss, masked-token accuracy, perplexity and NSP accuracy (first EVAL_LIMIT instances;
        dynamic masks drawn from a fixed seed, so every evaluation scores the same masks)."""
        device = next(model.parameters()).device
        n = min(len(self.eval_data), EVAL_LIMIT)
        rng = np.random.default_rng(12345)
        loss_sum = correct = masked = nsp_correct = seqs = 0.0
        for start in range(0, n, self.eval_batch_size):
            idx = list(range(start, min(n, start + self.eval_batch_size)))
            batch = {k: v.to(device) for k, v in self.eval_data.collate(idx, rng).items()}
            labels = batch.pop("labels")
            nsp_labels = batch.pop("next_sentence_label", None)
            out = model(**batch, labels=labels, only_masked=True)
            target = labels[labels != IGNORE_INDEX]
            loss_sum += float(out.mlm_loss) * target.numel()
            correct += float((out.logits.argmax(-1) == target).sum())
            masked += target.numel()
            if nsp_labels is not None and out.nsp_logits is not None:
                nsp_correct += float((out.nsp_logits.argmax(-1) == nsp_labels).sum())
                seqs += nsp_labels.numel()
        mlm_loss = loss_sum / max(masked, 1)
        metrics = {
            "mlm_loss": mlm_loss,
            "mlm_accuracy": correct / max(masked, 1),
            "perplexity": math.exp(min(mlm_loss, 50)),
        }
        if seqs:
            metrics["nsp_accuracy"] = nsp_correct / seqs
        return metrics

    def export(self, model: nn.Module, directory: Path) -> None:
        from ..checkpoint import save_pretrained

        save_pretrained(model, directory, tokenizer=self.tokenizer)


class ElectraPretrainTask(PretrainTask):
    """Replaced-token detection on the same shards and masks: the model is an ``ElectraPretrainer``; its
    loss terms are the generator's MLM (over masked tokens) and ``weight`` x the discriminator's
    binary cross-entropy (over all real tokens)."""

    def __init__(self, data: str | Path, tokenizer: Tokenizer, eval_batch_size: int = 64, weight: float | None = None):
        super().__init__(data, tokenizer, eval_batch_size, nsp=False)
        self.head = "discriminator"
        self.weight = DISCRIMINATOR_WEIGHT if weight is None else weight

    def counts(self, batch: dict[str, Tensor]) -> dict[str, int]:
        return {"mlm": int((batch["labels"] != IGNORE_INDEX).sum()), "rtd": int(batch["attention_mask"].sum())}

    def losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = model(**batch)
        return {"mlm": out.generator_loss, "rtd": self.weight * out.discriminator_loss}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out generator MLM loss and accuracy, discriminator loss, replaced-token accuracy over real
        tokens and its majority baseline (the share of the larger class: mostly "original"), and the share
        replaced; masks and samples are drawn from fixed seeds, so every evaluation scores the same draws."""
        device = next(model.parameters()).device
        n = min(len(self.eval_data), EVAL_LIMIT)
        rng = np.random.default_rng(12345)
        draws = torch.Generator(device=device).manual_seed(12345)
        sums = dict.fromkeys(("gen_loss", "gen_correct", "masked", "disc_loss", "correct", "replaced", "real"), 0.0)
        for start in range(0, n, self.eval_batch_size):
            idx = list(range(start, min(n, start + self.eval_batch_size)))
            batch = {k: v.to(device) for k, v in self.eval_data.collate(idx, rng).items()}
            out = model(**batch, generator=draws)
            target = batch["labels"][batch["labels"] != IGNORE_INDEX]
            real = out.replaced != IGNORE_INDEX
            said = (out.discriminator_logits > 0).long()
            m, r = target.numel(), int(real.sum())
            sums["gen_loss"] += float(out.generator_loss) * m
            sums["gen_correct"] += float((out.generator_logits.argmax(-1) == target).sum())
            sums["masked"] += m
            sums["disc_loss"] += float(out.discriminator_loss) * r
            sums["correct"] += float((said == out.replaced)[real].sum())
            sums["replaced"] += float(out.replaced[real].sum())
            sums["real"] += r
        masked, real = max(sums["masked"], 1), max(sums["real"], 1)
        share = sums["replaced"] / real
        return {
            "generator_loss": sums["gen_loss"] / masked,
            "generator_accuracy": sums["gen_correct"] / masked,
            "discriminator_loss": sums["disc_loss"] / real,
            "rtd_accuracy": sums["correct"] / real,
            "rtd_accuracy_baseline": max(share, 1 - share),
            "replaced_share": share,
        }

    def export(self, model: nn.Module, directory: Path) -> None:
        """The discriminator in ``directory`` (ElectraForPreTraining), the generator in its generator/."""
        model.save(directory, tokenizer=self.tokenizer)
