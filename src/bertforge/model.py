"""The BERT encoder (Devlin et al., 2018), as the Hugging Face checkpoints define it.

Post-LayerNorm residual layers, learned absolute positions, segment (token type) embeddings, a tanh
pooler over the first token. Names here are ours; ``checkpoint.py`` translates them to and from
Hugging Face's in one table.

When a batch has padding, the encoder runs on the real tokens only (see ``padding.py``): embeddings,
projections, feed-forward and LayerNorms see (N, H) packed tokens, and attention alone sees a tight
(B, max_len) layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import ATTENTION
from .config import BertConfig
from .errors import BertforgeError
from .padding import Packing, from_slots, pad, to_slots, unpad

ACTIVATIONS = {
    "gelu": F.gelu,  # exact, erf-based: BERT as published
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "gelu_fast": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,  # (RoBERTa's classifier; not a hidden_act any config names)
}


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (B, T, H); zeros at padding when the encoder unpadded
    pooler_output: Tensor | None  # (B, H): tanh(W h_[CLS] + b); None when not asked for


class Embeddings(nn.Module):
    """Token + position (+ segment) embeddings, LayerNorm, dropout; E wide, then projected to H where
    the family factorises them (ELECTRA when E != H, ALBERT always). DistilBERT has no segments."""

    def __init__(self, config: BertConfig):
        super().__init__()
        E, H = config.embedding_width, config.hidden_size
        self.word = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        # RoBERTa's padding tokens sit at position pad_token_id, a row that (as in transformers) never learns
        pad_position = config.pad_token_id if config.family.positions_from_pad else None
        self.position = nn.Embedding(config.max_position_embeddings, E, padding_idx=pad_position)
        self.token_type = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.project = nn.Linear(E, H) if E != H or config.family.always_project else None

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None, position_ids: Tensor) -> Tensor:
        # any leading shape: (B, T) padded or (N,) packed
        x = self.word(input_ids) + self.position(position_ids)
        if self.token_type is not None:
            x = x + self.token_type(token_type_ids)
        x = self.dropout(self.norm(x))
        return x if self.project is None else self.project(x)


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig, backend: str):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        H = config.hidden_size
        self.qkv = nn.Linear(H, 3 * H)  # query, key and value in one matmul
        self.out = nn.Linear(H, H)
        self.dropout_p = config.attention_probs_dropout_prob
        self.backend = backend

    def forward(self, x: Tensor, mask: Tensor | None, packing: Packing | None, first_only: bool = False) -> Tensor:
        qkv = self.qkv(x)  # (B, T, 3H) or packed (N, 3H)
        if packing is not None:
            qkv = to_slots(qkv, packing)  # (B, L, 3H), L = longest real sequence
            mask = packing.key_mask()  # (B, 1, 1, L)
        B, T, _ = qkv.shape
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_size).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        dropout_p = self.dropout_p if self.training else 0.0
        y = ATTENTION[self.backend](q, k, v, mask, dropout_p)  # (B, nh, T, hs)
        if first_only:  # only the first token's output is wanted (the tight layout's first slot too)
            y = y[:, :, :1]  # (B, nh, 1, hs): project that row alone
        y = y.transpose(1, 2).reshape(B, y.size(2), self.num_heads * self.head_size)  # (B, T or 1, H)
        if first_only:
            return self.out(y)
        if packing is not None:
            y = from_slots(y, packing)  # (N, H)
        return self.out(y)


class FeedForward(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.hidden_act = config.hidden_act
        self.act = ACTIVATIONS[config.hidden_act]  # (``precision.fuse_linears`` may fold it into ``up``)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class Layer(nn.Module):
    """One post-LayerNorm Transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: BertConfig, attention: str):
        super().__init__()
        self.attn = SelfAttention(config, attention)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, mask: Tensor | None, packing: Packing | None, first_only: bool = False) -> Tensor:
        """``first_only``: every token is attended to, but only each sequence's first token ([CLS]) is
        computed onwards; returns (B, 1, H). Rows are independent after attention, so that row is
        exactly what the full layer gives, for a third or less of the layer's cost."""
        a = self.attn(x, mask, packing, first_only)
        if first_only:
            x = x[:, :1] if packing is None else x.index_select(0, packing.starts()).unsqueeze(1)
        x = self.attn_norm(x + self.dropout(a))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class Pooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, first_token: Tensor) -> Tensor:
        return torch.tanh(self.dense(first_token))


def default_positions(config: BertConfig, input_ids: Tensor) -> Tensor:
    """(B, T) positions: 0..T-1, or RoBERTa's, which count real tokens from pad + 1 (padding at pad)."""
    B, T = input_ids.shape
    if not config.family.positions_from_pad:
        return torch.arange(T, device=input_ids.device).expand(B, T)
    real = input_ids.ne(config.pad_token_id).long()
    return torch.cumsum(real, dim=1) * real + config.pad_token_id


class BertModel(nn.Module):
    """The encoder: embeddings, ``num_hidden_layers`` layers and the pooler (in the families that have one).
    ALBERT's layers share weights: ``layers`` holds the distinct ones and ``config.layer_order`` says
    which runs at each depth.

    ``attention`` names a backend in ``attention.ATTENTION`` ("sdpa" or "math"). With ``unpad``, a
    batch whose padding exceeds ``unpad_above`` of its tokens (default 20%: random training batches)
    runs on its real tokens only, else dense. ``precision.prepare`` sets it per precision for inference:
    in fp32 and int8 the matmuls dominate and even the ~6% padding of length-sorted batches is worth
    skipping (0: 1.03-1.08x fp32, 1.03-1.09x int8 in ``benchmarks/ablation.py``); in bf16
    the gathers cost more than the cheap matmuls they save, and 20% stays. Outputs at real positions
    are the same either way; padding positions hold zeros when unpadded and what the dense
    computation gives there otherwise.
    """

    def __init__(self, config: BertConfig, attention: str = "sdpa", unpad: bool = True):
        super().__init__()
        if attention not in ATTENTION:
            raise BertforgeError(f"unknown attention backend {attention!r} (choose from {', '.join(ATTENTION)})")
        self.config = config
        self.unpad = unpad
        self.unpad_above = 0.2  # fraction of padding tokens above which a batch runs unpadded
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList([Layer(config, attention) for _ in range(config.distinct_layers)])
        self.order = config.layer_order
        self.pooler = Pooler(config) if None in config.family.pooled_heads else None
        self.apply(partial(init_weights, std=config.initializer_range))

    def set_attention(self, backend: str) -> None:
        if backend not in ATTENTION:
            raise BertforgeError(f"unknown attention backend {backend!r} (choose from {', '.join(ATTENTION)})")
        for layer in self.layers:
            layer.attn.backend = backend

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        pool: bool = True,
        first_token_only: bool = False,
    ) -> EncoderOutput:
        """``pool=False`` skips the pooler (``pooler_output`` is None), for heads that read tokens.
        ``first_token_only`` is for heads that read the pooled [CLS] alone (classification, multiple
        choice): the last layer computes the first token only, and ``last_hidden_state`` is (B, 1, H)."""
        B, T = input_ids.shape
        self.config.check_length(T)
        if token_type_ids is None or self.config.type_vocab_size <= 1:  # (RoBERTa: one segment whatever is given)
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = default_positions(self.config, input_ids)
        packing = mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
            if self.unpad:  # (the dense path reads no data here, so it exports and compiles as a graph)
                real = int(attention_mask.sum())
                if real == B * T:
                    mask = None  # no padding: the unmasked kernels are faster
                elif real < (1 - self.unpad_above) * B * T:
                    packing = Packing.from_mask(attention_mask)
        if packing is not None:
            ids, types, pos = (unpad(t, packing) for t in (input_ids, token_type_ids, position_ids))
            x = self.embeddings(ids, types, pos)  # (N, H)
        else:
            x = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, T, H)
        last = len(self.order) - 1
        for i, which in enumerate(self.order):
            x = self.layers[which](x, mask, packing, first_only=first_token_only and i == last)
        if first_token_only:
            hidden = x  # (B, 1, H)
        else:
            hidden = pad(x, packing) if packing is not None else x  # (B, T, H)
        pooled = self.pooler(hidden[:, 0]) if pool and self.pooler is not None else None
        return EncoderOutput(last_hidden_state=hidden, pooler_output=pooled)


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout of a built model (hidden, attention, heads) to ``p``, and its config to match."""
    if not 0 <= p <= 1:  # (NaN too) torch would say so only at the first training step
        raise BertforgeError(f"dropout must be within [0, 1], not {p}")
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(m, SelfAttention):
            m.dropout_p = p
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = p
    model.config.classifier_dropout = None


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std) weights, zero biases, unit LayerNorms, a zero padding embedding."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
