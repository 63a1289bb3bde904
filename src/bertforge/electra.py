"""ELECTRA pretraining (Clark et al., 2020): replaced-token detection.

A small generator (an MLM of a fraction of the discriminator's width) fills the masked positions with
tokens sampled from its softmax; the discriminator, the model that is kept and fine-tuned, learns from
every real token which ones were replaced. The two share their token, position and segment embeddings
(and the embeddings' LayerNorm), as in the paper; the loss is the generator's MLM loss plus
``DISCRIMINATOR_WEIGHT`` times the discriminator's binary cross-entropy. Sampling passes no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import BertConfig
from .errors import BertforgeError
from .heads import IGNORE_INDEX, BertWithHead

DISCRIMINATOR_WEIGHT = 50.0  # lambda in the paper: the discriminator's loss is ~50x smaller than the MLM's
GENERATOR_SIZE = 0.25  # the paper's generator width for ELECTRA-small and -large (1/3 for base)
SHARED = ("word", "position", "token_type", "norm")  # the embedding modules both models use


def generator_config(config: BertConfig, size: float = GENERATOR_SIZE) -> BertConfig:
    """The generator's shape for a discriminator of ``config``, as ELECTRA's get_generator_config makes it:
    ``size`` x its width, a 4x feed-forward, heads of 64 (at least one), as many layers, and embeddings
    as wide as the discriminator's (they are shared; the generator projects them to its own width)."""
    if not 0 < size <= 1:
        raise BertforgeError(f"generator size {size} must be in (0, 1]: a fraction of the discriminator's width")
    hidden = max(1, round(config.hidden_size * size))
    heads = max(1, hidden // 64)
    while hidden % heads:  # (a width that 64 does not divide: the nearest head count that does)
        heads -= 1
    return config.replace(
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        embedding_size=config.embedding_width,
        architectures=None,
        id2label=None,
    )


def gumbel_sample(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token id per row of (M, V) ``logits``, drawn from their softmax by the Gumbel-max trick (as
    ELECTRA's sample_from_softmax); ``generator`` fixes the draws (evaluation), else torch's global RNG."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    return (logits.float() - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(-1)


def replaced_labels(corrupted: Tensor, original: Tensor, attention_mask: Tensor) -> Tensor:
    """The discriminator's targets: 1 where its input differs from the original text, 0 where it is the
    same (a sampled token equal to the original counts as original, as in the paper), IGNORE_INDEX at padding."""
    labels = corrupted.ne(original).long()
    return labels.masked_fill(~attention_mask.bool(), IGNORE_INDEX)


@dataclass
class ElectraOutput:
    generator_loss: Tensor  # mean cross-entropy over the masked positions
    discriminator_loss: Tensor  # mean binary cross-entropy over the real tokens
    generator_logits: Tensor  # (M, V) at the masked positions
    discriminator_logits: Tensor  # (B, T): > 0 says "replaced"
    corrupted: Tensor  # (B, T) the discriminator's input
    replaced: Tensor  # (B, T) its targets (replaced_labels)


class ElectraPretrainer(nn.Module):
    """The generator and the discriminator, trained together; ``config`` is the discriminator's."""

    def __init__(self, discriminator: BertWithHead, generator: BertWithHead):
        super().__init__()
        if discriminator.head_name != "discriminator" or generator.head_name != "mlm":
            raise BertforgeError("ELECTRA pretraining takes a discriminator head and an mlm (generator) head")
        if generator.config.embedding_width != discriminator.config.embedding_width:
            raise BertforgeError(
                f"the generator's embeddings are {generator.config.embedding_width} wide, the discriminator's "
                f"{discriminator.config.embedding_width}: they are shared, so they must match"
            )
        self.discriminator, self.generator = discriminator, generator
        self.config = discriminator.config
        ours, theirs = discriminator.bert.embeddings, generator.bert.embeddings
        for name in SHARED:
            setattr(theirs, name, getattr(ours, name))
        generator.head.mlm.decoder.weight = ours.word.weight  # the generator's output layer: tied to them too

    @classmethod
    def new(cls, config: BertConfig, generator_size: float = GENERATOR_SIZE) -> ElectraPretrainer:
        """A freshly initialised pair for a discriminator of ``config``."""
        if config.model_type != "electra":
            raise BertforgeError(f"ELECTRA pretraining trains an ELECTRA model, not {config.model_type}")
        return cls(BertWithHead(config, "discriminator"), BertWithHead(generator_config(config, generator_size), "mlm"))

    @classmethod
    def load(cls, directory: str | Path) -> ElectraPretrainer:
        """A pair saved by ``save`` (a run's final/ or a checkpoint): the discriminator in ``directory``, the
        generator in ``directory/generator``."""
        from .checkpoint import load_pretrained

        directory = Path(directory)
        if not (directory / "generator" / "config.json").is_file():
            raise BertforgeError(
                f"{directory}: no generator/ beside the discriminator (not an ELECTRA pretraining run)"
            )
        return cls(
            load_pretrained(directory, head="discriminator"), load_pretrained(directory / "generator", head="mlm")
        )

    def save(self, directory: str | Path, tokenizer=None) -> None:
        """The discriminator as an ElectraForPreTraining directory, the generator as an ElectraForMaskedLM
        one in its generator/ subdirectory; each holds the shared embeddings."""
        from .checkpoint import save_pretrained

        save_pretrained(self.discriminator, directory, tokenizer=tokenizer)
        save_pretrained(self.generator, Path(directory) / "generator", tokenizer=tokenizer)

    def load_saved(self, directory: Path) -> None:
        """Weights saved by ``save`` into this pair (resuming a run); the shared embeddings are read twice, alike."""
        from .checkpoint import load_state, read_weights

        load_state(self.discriminator, read_weights(directory), str(directory))
        load_state(self.generator, read_weights(directory / "generator"), str(directory / "generator"))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        token_type_ids: Tensor | None = None,
        generator: torch.Generator | None = None,
        **ignored: Tensor,  # (next_sentence_label of pair shards: ELECTRA has no sentence-level loss)
    ) -> ElectraOutput:
        """``input_ids`` masked, ``labels`` the original ids at the masked positions (IGNORE_INDEX elsewhere)."""
        gen = self.generator(input_ids, attention_mask, token_type_ids, labels=labels, only_masked=True)
        masked = labels.ne(IGNORE_INDEX)
        with torch.no_grad():
            sampled = gumbel_sample(gen.logits.detach(), generator)  # (M,)
        original = torch.where(masked, labels, input_ids)
        corrupted = original.masked_scatter(masked, sampled.to(original.dtype))
        replaced = replaced_labels(corrupted, original, attention_mask)
        disc = self.discriminator(corrupted, attention_mask, token_type_ids, labels=replaced)
        return ElectraOutput(gen.mlm_loss, disc.loss, gen.logits, disc.logits, corrupted, replaced)
