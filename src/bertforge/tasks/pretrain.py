"""Pretraining as a task for the training loop: masked language modelling, plus next-sentence
prediction when the shards have it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.shards import PretrainShards
from ..heads import IGNORE_INDEX
from ..tokenizer import Tokenizer

EVAL_LIMIT = 4096  # held-out instances scored per evaluation: enough for stable numbers, cheap on a CPU


class PretrainTask:
    def __init__(self, data: str | Path, tokenizer: Tokenizer, eval_batch_size: int = 64):
        self.train_data = PretrainShards(data, "train")
        self.eval_data = PretrainShards(data, "eval")
        self.nsp = bool(self.train_data.manifest["nsp"])
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
