"""Plain-text rules shared by the package: what counts as a CJK character, and sentence splitting.

CJK characters are the ranges BERT's tokenizer treats as Chinese (``_is_chinese_char``), so the
tokenizer, whole-word masking, SQuAD normalisation, ROUGE and summary lengths agree on them.
"""

from __future__ import annotations

import re

# the code-point ranges BERT's tokenizer splits into one word per character
CJK_RANGES = (
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0x2F800, 0x2FA1F),
)
CJK_CLASS = "".join(f"{chr(a)}-{chr(b)}" for a, b in CJK_RANGES)  # for use inside [...] in a regex
CJK = re.compile(f"[{CJK_CLASS}]")


def has_cjk(text: str) -> bool:
    return CJK.search(text) is not None


def is_cjk_char(token: str) -> bool:
    """Is ``token`` one CJK character?"""
    return len(token) == 1 and CJK.match(token) is not None


# -- sentences ------------------------------------------------------------------------------------
# Words that end in a full stop without ending the sentence (compared lowercased, without the stop);
# initials ("J.") and dotted words ("U.S.", "e.g.") are recognised by shape.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc no nos fig figs eq eqs sec pp vol inc ltd co corp mt ft gen col lt "
    "sgt capt rev jan feb mar apr jun jul aug sep sept oct nov dec approx resp dept est ca cf al".split()
)

_CLOSE = "\"'”’)）]】」』》"
_OPEN = "\"'“‘(（[【「『《"
_PARAGRAPH = re.compile(r"\n\s*\n")
# Chinese end: a run of 。！？ (mixed with !? as in "！?"), or an ellipsis; then closing quotes.
_ZH_END = re.compile(rf"(?:[。！？][。！？!?]*|…+|⋯+)[{re.escape(_CLOSE)}]*\s*")
# English end: terminal punctuation, closing quotes, then space before a capital, digit, opening quote or CJK.
_EN_END = re.compile(rf"[.!?]+[{re.escape(_CLOSE)}]*\s+(?=[{re.escape(_OPEN)}]?[A-ZÀ-ÖØ-Þ0-9{CJK_CLASS}])")
_WORD_BEFORE_STOP = re.compile(r"([\w.]+)\.$")


def _is_abbreviation(text: str) -> bool:
    """Does ``text`` (ending in a single full stop) end with an abbreviation, an initial or a dotted word?"""
    m = _WORD_BEFORE_STOP.search(text[-40:])  # abbreviations are short; a long prefix only costs time
    if m is None:
        return False
    word = m.group(1)
    return word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or "." in word


def split_sentences(text: str) -> list[str]:
    """The sentences of a text, stripped: English ends at . ! ? (not after an abbreviation or initial)
    before a capital, digit or quote; Chinese at 。！？ or an ellipsis; a blank line ends one too."""
    return [s for paragraph in _PARAGRAPH.split(text) for s in _paragraph_sentences(paragraph.strip())]


def _paragraph_sentences(text: str) -> list[str]:
    if not text:
        return []
    ends = [(m.end(), m.end()) for m in _ZH_END.finditer(text)]
    for m in _EN_END.finditer(text):
        stop = m.group(0).rstrip()
        before = text[: m.start() + len(stop.rstrip(_CLOSE))]
        if stop.rstrip(_CLOSE) == "." and _is_abbreviation(before):
            continue
        ends.append((m.start() + len(stop), m.end()))
    sentences, start = [], 0
    for end, next_start in sorted(set(ends)):
        if end <= start:
            continue
        piece = text[start:end].strip()
        if piece:
            sentences.append(piece)
        start = next_start
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences
