"""CJK ranges and sentence splitting: the one definition every module uses."""

import pytest

from bertforge import metrics, text
from bertforge.data import corpus
from bertforge.tasks import extsum


@pytest.mark.parametrize("ch", ["\u3400", "中", "\uf900", "\U00020000", "\U0002A700", "\U0002B740", "\U0002F800"])
def test_every_bert_chinese_range_is_cjk_everywhere(ch):
    assert text.is_cjk_char(ch) and text.has_cjk(f"a{ch}b")
    assert metrics.squad_normalize(f"x{ch}y") == f"x {ch} y"
    assert metrics.CharTokenizer().tokenize(f"ab{ch}") == ["ab", ch]
    assert extsum.words(f"ab{ch}{ch}") == ["ab", ch, ch]


@pytest.mark.parametrize("ch", ["a", "\u3000", "ア", "한", "\U0002FA20"])
def test_other_characters_are_not_cjk(ch):
    assert not text.is_cjk_char(ch)


def test_one_splitter_for_pretraining_and_summaries():
    from bertforge.data import sentences

    assert sentences.split_sentences is text.split_sentences is extsum.split_sentences
    assert corpus.has_cjk is text.has_cjk


def test_paragraphs_accents_and_abbreviations():
    assert text.split_sentences("One here.\n\nÉcole starts. Two e.g. this. Three") == [
        "One here.", "École starts.", "Two e.g. this.", "Three"]
    assert text.split_sentences("See Eq. 3 and Sec. 4. Done.") == ["See Eq. 3 and Sec. 4.", "Done."]
