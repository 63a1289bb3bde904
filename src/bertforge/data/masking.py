"""Masked-language-model masking: BERT's 15% of tokens, 80% [MASK] / 10% random / 10% kept, by one
function for static masks (applied while preparing shards) and dynamic ones (drawn per batch at load
time, RoBERTa style), so both follow the same rules (``mask_tokens``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MaskingRule:
    """Everything masking needs besides the tokens and the random generator."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]  # never masked, never a random replacement
    prob: float = 0.15  # BERT's fraction of tokens to predict
    max_predictions: int = 20  # BERT's cap for 128-token sequences (0.15 * 128 = 19.2)
    whole_word: bool = False
    is_special: np.ndarray = field(init=False, repr=False, compare=False)  # (vocab_size,) bool lookup table
    replacements: np.ndarray = field(init=False, repr=False, compare=False)  # ids a random replacement draws from

    def __post_init__(self) -> None:
        is_special = np.zeros(self.vocab_size, dtype=bool)
        is_special[list(self.special_ids)] = True
        object.__setattr__(self, "is_special", is_special)
        object.__setattr__(self, "replacements", np.flatnonzero(~is_special))

    def num_to_predict(self, length: int) -> int:
        """How many tokens a sequence of ``length`` tokens (specials included) gets masked."""
        return min(self.max_predictions, max(1, round(length * self.prob)))


def mask_tokens(
    ids: np.ndarray,
    rule: MaskingRule,
    rng: np.random.Generator,
    word_continues: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask one sequence. Returns (input ids with masks applied, masked positions sorted, original ids there).

    ``word_continues[i]`` is true where token ``i`` belongs to the same word as token ``i - 1``; it is
    used only when ``rule.whole_word`` is set. The rules:

    - ``num_to_predict = min(max_predictions, max(1, round(len(ids) * prob)))``, counting the special
      tokens as google-research/bert's create_pretraining_data.py does;
    - special tokens ([CLS], [SEP], [PAD], [UNK], [MASK]) are never chosen, and never drawn as the random
      replacement (google-research/bert draws [CLS] or [PAD] there too; a replacement the model never sees
      in real input teaches it nothing);
    - with whole-word masking a word (its first token plus the tokens flagged as continuing it: ``##``
      pieces, or the characters of one Chinese word) is masked entirely or not at all; a word that would
      overshoot ``num_to_predict`` is skipped, as in google-research/bert;
    - the 80/10/10 choice is made per token, also within a whole word.
    """
    ids = np.asarray(ids, dtype=np.int64)
    maskable = ~rule.is_special[ids]
    positions = np.flatnonzero(maskable)
    k = rule.num_to_predict(len(ids))
    if rule.whole_word and word_continues is not None and len(positions):
        previous_maskable = np.concatenate(([False], maskable[:-1]))
        starts = maskable & ~(np.asarray(word_continues, dtype=bool) & previous_maskable)
        bounds = np.append(
            np.flatnonzero(starts[positions]), len(positions)
        )  # word w: positions[bounds[w]:bounds[w+1]]
        chosen: list[np.ndarray] = []
        taken = 0
        for w in rng.permutation(len(bounds) - 1):
            if taken >= k:
                break
            size = bounds[w + 1] - bounds[w]
            if taken + size > k:
                continue
            chosen.append(positions[bounds[w] : bounds[w + 1]])
            taken += size
        picked = np.sort(np.concatenate(chosen)) if chosen else positions[:0]
    else:
        picked = np.sort(rng.permutation(positions)[:k])
    labels = ids[picked]
    out = ids.copy()
    u = rng.random(len(picked))
    replacement = rule.replacements[rng.integers(0, len(rule.replacements), len(picked))]
    out[picked[u < 0.8]] = rule.mask_id  # 80%: [MASK]
    randomised = u >= 0.9  # 10%: a random token; the remaining 10% keep the original
    out[picked[randomised]] = replacement[randomised]
    return out, picked, labels
