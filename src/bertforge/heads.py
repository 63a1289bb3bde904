"""Task heads on top of the encoder, and ``BertWithHead`` that joins the two.

Each head takes the encoder's output (and the targets, when training) and returns its logits and,
given targets, the same loss as the matching ``transformers`` class:

  pretrain  MLM (transform + decoder tied to the word embeddings) + NSP   BertForPreTraining
  mlm       MLM only                                                      BertForMaskedLM
  classify  pooled [CLS] -> labels; single-label, multi-label, regression BertForSequenceClassification
  tag       every token -> labels                                         BertForTokenClassification
  span      every token -> (start, end) logits                            BertForQuestionAnswering
  choice    each (context, choice) pooled -> one score                    BertForMultipleChoice
  extsum    each sentence's [CLS] -> one score (BertSum, Liu 2019)        (ours: BertForExtractiveSummarization)
  discriminator  every token -> replaced or not (ELECTRA)                 ElectraForPreTraining

Other families name the classes after themselves (RobertaForMaskedLM ...); where their heads differ
in shape (RoBERTa's classifier has a dense layer of its own on <s>, ALBERT's NSP is SOP) the family's
switches in ``families.py`` say how.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import BertConfig
from .errors import BertforgeError
from .model import ACTIVATIONS, BertModel, EncoderOutput, init_weights

IGNORE_INDEX = -100  # targets equal to this are left out of the loss, as in PyTorch and transformers


@dataclass
class HeadOutput:
    logits: Tensor  # the head's main scores; for span: start logits
    loss: Tensor | None = None
    nsp_logits: Tensor | None = None  # pretrain: (B, 2)
    end_logits: Tensor | None = None  # span: (B, T)
    mlm_loss: Tensor | None = None
    nsp_loss: Tensor | None = None


def _initialised(module: nn.Module, config: BertConfig) -> None:
    module.apply(partial(init_weights, std=config.initializer_range))


class MLMHead(nn.Module):
    """transform (dense to the embedding width, act, LayerNorm), then a decoder whose weight is the
    word embedding matrix."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        E = config.embedding_width
        self.transform = nn.Linear(config.hidden_size, E)
        self.act = ACTIVATIONS[config.family.mlm_act or config.hidden_act]
        self.norm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(E, config.vocab_size)
        _initialised(self, config)
        self.decoder.weight = word_embeddings.weight  # tied; the decoder keeps its own bias

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.transform(hidden))))  # (..., V)

    def loss(self, hidden: Tensor, labels: Tensor, only_masked: bool) -> tuple[Tensor, Tensor]:
        """MLM logits and mean cross-entropy over labelled positions.

        With ``only_masked`` the vocabulary projection (the largest matmul of a small BERT) runs on the
        labelled positions alone and the logits come back as (M, V); the loss is the same.
        """
        if only_masked:
            where = labels != IGNORE_INDEX
            logits = self(hidden[where])  # (M, V)
            return logits, F.cross_entropy(logits.float(), labels[where])
        logits = self(hidden)  # (B, T, V)
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1))


class PretrainingHead(nn.Module):
    uses_pooler = True  # NSP reads the pooled [CLS]
    reads_pooler_only = False

    def __init__(self, config: BertConfig, bert: BertModel, nsp: bool = True):
        super().__init__()
        self.nsp = nn.Linear(config.hidden_size, 2) if nsp else None
        _initialised(self, config)
        self.mlm = MLMHead(config, bert.embeddings.word)

    def forward(
        self,
        enc: EncoderOutput,
        labels: Tensor | None = None,
        next_sentence_label: Tensor | None = None,
        only_masked: bool = False,
    ) -> HeadOutput:
        nsp_logits = self.nsp(enc.pooler_output) if self.nsp is not None else None
        if labels is None:
            return HeadOutput(logits=self.mlm(enc.last_hidden_state), nsp_logits=nsp_logits)
        logits, mlm_loss = self.mlm.loss(enc.last_hidden_state, labels, only_masked)
        loss, nsp_loss = mlm_loss, None
        if nsp_logits is not None and next_sentence_label is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label.view(-1))
            loss = mlm_loss + nsp_loss
        return HeadOutput(logits, loss, nsp_logits=nsp_logits, mlm_loss=mlm_loss, nsp_loss=nsp_loss)


class MaskedLMHead(PretrainingHead):
    uses_pooler = False
    reads_pooler_only = False

    def __init__(self, config: BertConfig, bert: BertModel):
        super().__init__(config, bert, nsp=False)


def _dropout(config: BertConfig) -> nn.Dropout:
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p)


class FirstToken(nn.Module):
    """A sequence's vector for a classifier: the pooled [CLS] (BERT, ALBERT), or where the family's
    head has a dense layer of its own, dropout -> dense -> activation on the first token (RoBERTa:
    tanh, ELECTRA: gelu, DistilBERT: relu), then dropout."""

    def __init__(self, config: BertConfig, head: str):
        super().__init__()
        act = config.family.summary.get(head)
        self.dropout = _dropout(config)
        self.pre = nn.Linear(config.hidden_size, config.hidden_size) if act else None
        self.act = ACTIVATIONS[act] if act else None

    @property
    def pooled(self) -> bool:
        return self.pre is None

    def forward(self, enc: EncoderOutput) -> Tensor:
        if self.pre is None:
            return self.dropout(enc.pooler_output)  # (B, H)
        return self.dropout(self.act(self.pre(self.dropout(enc.last_hidden_state[:, 0]))))  # (B, H)


class ClassificationHead(nn.Module):
    reads_pooler_only = True  # only [CLS] reaches the head: the last layer computes that row alone

    def __init__(self, config: BertConfig, bert: BertModel, head: str = "classify", outputs: int | None = None):
        super().__init__()
        self.config = config
        self.first = FirstToken(config, head)
        self.uses_pooler = self.first.pooled
        self.classifier = nn.Linear(config.hidden_size, outputs or config.num_labels)
        _initialised(self, config)

    def forward(self, enc: EncoderOutput, labels: Tensor | None = None) -> HeadOutput:
        logits = self.classifier(self.first(enc))  # (B, num_labels)
        if labels is None:
            return HeadOutput(logits)
        return HeadOutput(logits, classification_loss(logits, labels, self.config.problem_type))


def classification_loss(logits: Tensor, labels: Tensor, problem_type: str | None) -> Tensor:
    """transformers' rule: regression for one output, single-label for integer labels, else multi-label."""
    num_labels = logits.size(-1)
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    logits = logits.float()
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.float().squeeze())
        return F.mse_loss(logits, labels.float())
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    raise BertforgeError(f"unknown problem_type {problem_type!r}")


class TaggingHead(nn.Module):
    uses_pooler = False
    reads_pooler_only = False

    def __init__(self, config: BertConfig, bert: BertModel):
        super().__init__()
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        _initialised(self, config)

    def forward(self, enc: EncoderOutput, labels: Tensor | None = None) -> HeadOutput:
        logits = self.classifier(self.dropout(enc.last_hidden_state))  # (B, T, num_labels)
        if labels is None:
            return HeadOutput(logits)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1))
        return HeadOutput(logits, loss)


class SpanHead(nn.Module):
    uses_pooler = False
    reads_pooler_only = False

    def __init__(self, config: BertConfig, bert: BertModel):
        super().__init__()
        self.qa = nn.Linear(config.hidden_size, 2)
        _initialised(self, config)

    def forward(
        self, enc: EncoderOutput, start_positions: Tensor | None = None, end_positions: Tensor | None = None
    ) -> HeadOutput:
        start, end = self.qa(enc.last_hidden_state).unbind(dim=-1)  # 2 x (B, T)
        if start_positions is None or end_positions is None:
            return HeadOutput(start, end_logits=end)
        # positions outside the sequence are ignored, as in transformers
        ignored = start.size(1)
        s = start_positions.view(-1).clamp(0, ignored)
        e = end_positions.view(-1).clamp(0, ignored)
        loss = (
            F.cross_entropy(start.float(), s, ignore_index=ignored)
            + F.cross_entropy(end.float(), e, ignore_index=ignored)
        ) / 2
        return HeadOutput(start, loss, end_logits=end)


class ChoiceHead(ClassificationHead):
    def __init__(self, config: BertConfig, bert: BertModel):
        super().__init__(config, bert, head="choice", outputs=1)

    def forward(self, enc: EncoderOutput, labels: Tensor | None = None, num_choices: int = 1) -> HeadOutput:
        logits = self.classifier(self.first(enc)).view(-1, num_choices)  # (B, C)
        if labels is None:
            return HeadOutput(logits)
        return HeadOutput(logits, F.cross_entropy(logits.float(), labels.view(-1)))


class DiscriminatorHead(nn.Module):
    """ELECTRA's replaced-token detection: dense, activation, dense -> one logit a token; given 0/1
    labels, binary cross-entropy over the real tokens (``attention_mask``), as ElectraForPreTraining."""

    uses_pooler = False
    reads_pooler_only = False
    reads_attention_mask = True

    def __init__(self, config: BertConfig, bert: BertModel):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.out = nn.Linear(config.hidden_size, 1)
        _initialised(self, config)

    def forward(
        self, enc: EncoderOutput, labels: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> HeadOutput:
        logits = self.out(self.act(self.dense(enc.last_hidden_state))).squeeze(-1)  # (B, T)
        if labels is None:
            return HeadOutput(logits)
        real = labels.ne(IGNORE_INDEX) if attention_mask is None else attention_mask.bool() & labels.ne(IGNORE_INDEX)
        return HeadOutput(logits, F.binary_cross_entropy_with_logits(logits.float()[real], labels[real].float()))


def sinusoidal_positions(n: int, dim: int, device: torch.device) -> Tensor:
    """(n, dim) sine/cosine position codes (Vaswani et al., 2017): no weights, any length."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


class InterSentenceLayer(nn.Module):
    """One pre-LayerNorm Transformer layer over sentence vectors, as in BertSum's ExtTransformerEncoder."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.attn_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(H, 3 * H)
        self.out = nn.Linear(H, H)
        self.ffn_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.up = nn.Linear(H, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.down = nn.Linear(config.intermediate_size, H)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dropout_p = config.hidden_dropout_prob
        _initialised(self, config)

    def forward(self, x: Tensor, keys: Tensor) -> Tensor:
        B, S, H = x.shape
        q, k, v = (
            self.qkv(self.attn_norm(x)).view(B, S, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        )  # 3 x (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=self.dropout_p if self.training else 0.0)
        x = x + self.dropout(self.out(y.transpose(1, 2).reshape(B, S, H)))
        return x + self.dropout(self.down(self.act(self.up(self.ffn_norm(x)))))


class InterSentenceEncoder(nn.Module):
    """BertSum's ``ExtTransformerEncoder``: ``n`` Transformer layers over a document's sentence vectors
    (sinusoidal sentence positions added first), then a LayerNorm; with ``n = 0`` the identity."""

    def __init__(self, config: BertConfig, n: int):
        super().__init__()
        self.layers = nn.ModuleList([InterSentenceLayer(config) for _ in range(n)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if n else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if not self.layers:
            return x
        B, S, H = x.shape
        x = x * mask[..., None] + sinusoidal_positions(S, H, x.device).to(x.dtype)  # (B, S, H)
        keys = mask[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, keys)
        return self.norm(x)


class ExtractiveSummaryHead(nn.Module):
    """BertSum (Liu, 2019): every sentence of a document starts with its own [CLS]; the encoder's
    vector there is the sentence's, optionally passed through inter-sentence Transformer layers
    (``config.extra["extsum_inter_layers"]``), and a linear layer scores it (sigmoid: in the summary).

    Inputs come flat, so a long document can be encoded as several windows: the encoder runs on
    (W, T) windows and ``sentence_index`` (B, S) points each sentence of each of the B documents at
    its [CLS] among the W x T token positions; ``sentence_mask`` (B, S) marks real sentences.
    """

    uses_pooler = False
    reads_pooler_only = False

    def __init__(self, config: BertConfig, bert: BertModel):
        super().__init__()
        self.inter = InterSentenceEncoder(config, int(config.extra.get("extsum_inter_layers", 0)))
        self.scorer = nn.Linear(config.hidden_size, 1)
        _initialised(self.scorer, config)

    def score(self, vectors: Tensor, mask: Tensor) -> Tensor:
        """(B, S) logits from (B, S, H) sentence vectors."""
        return self.scorer(self.inter(vectors, mask)).squeeze(-1)

    def forward(
        self, enc: EncoderOutput, sentence_index: Tensor, sentence_mask: Tensor, labels: Tensor | None = None
    ) -> HeadOutput:
        """(B, S) logits (meaningless where ``sentence_mask`` is False); given 0/1 ``labels``, the mean
        binary cross-entropy over real sentences."""
        hidden = enc.last_hidden_state
        vectors = hidden.reshape(-1, hidden.size(-1))[sentence_index]  # (B, S, H)
        mask = sentence_mask.bool()
        logits = self.score(vectors, mask)  # (B, S)
        if labels is None:
            return HeadOutput(logits)
        loss = F.binary_cross_entropy_with_logits(logits.float()[mask], labels.float()[mask])
        return HeadOutput(logits, loss)


HEADS: dict[str, type[nn.Module]] = {
    "pretrain": PretrainingHead,
    "mlm": MaskedLMHead,
    "classify": ClassificationHead,
    "tag": TaggingHead,
    "span": SpanHead,
    "choice": ChoiceHead,
    "extsum": ExtractiveSummaryHead,
    "discriminator": DiscriminatorHead,
}


class BertWithHead(nn.Module):
    """The encoder and one head. Inputs are (B, T); for the choice head (B, C, T)."""

    def __init__(self, config: BertConfig, head: str, attention: str = "sdpa", unpad: bool = True):
        super().__init__()
        if head not in HEADS:
            raise BertforgeError(f"unknown head {head!r} (choose from {', '.join(HEADS)})")
        self.config = config
        config.family.head_keys(head)  # a head the family does not have: one line naming those it has
        self.head_name = head
        self.bert = BertModel(config, attention=attention, unpad=unpad)
        self.head = HEADS[head](config, self.bert)
        # a head that reads tokens leaves the pooler out of the graph: freeze it, so DDP and the
        # optimiser do not wait for gradients that never come (its weights are still saved)
        if self.bert.pooler is not None:
            self.bert.pooler.requires_grad_(self.head.uses_pooler)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        **targets: Tensor,
    ) -> HeadOutput:
        if input_ids.dim() == 3:  # (B, C, T): multiple choice
            if self.head_name != "choice":
                raise BertforgeError(f"the {self.head_name} head takes (batch, length) inputs, not 3-D")

            def flat(t: Tensor | None) -> Tensor | None:
                return None if t is None else t.reshape(-1, t.size(-1))

            enc = self.bert(flat(input_ids), flat(attention_mask), flat(token_type_ids), first_token_only=True)
            return self.head(enc, num_choices=input_ids.size(1), **targets)
        enc = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            pool=self.head.uses_pooler,
            first_token_only=self.head.reads_pooler_only,
        )
        if getattr(self.head, "reads_attention_mask", False) and targets:
            targets["attention_mask"] = attention_mask
        return self.head(enc, **targets)
