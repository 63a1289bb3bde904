"""CJK ranges and sentence splitting: the one definition every module uses."""

import pytest

from bertforge import metrics, summary, text
from bertforge.data import corpus


@pytest.mark.parametrize("ch", ["\u3400", "中", "\uf900", "\U00020000", "\U0002a700", "\U0002b740", "\U0002f800"])
def test_every_bert_chinese_range_is_cjk_everywhere(ch):
    assert text.is_cjk_char(ch) and text.has_cjk(f"a{ch}b")
    assert metrics.squad_normalize(f"x{ch}y") == f"x {ch} y"
    assert metrics.CharTokenizer().tokenize(f"ab{ch}") == ["ab", ch]
    assert summary.words(f"ab{ch}{ch}") == ["ab", ch, ch]


@pytest.mark.parametrize("ch", ["a", "\u3000", "ア", "한", "\U0002fa20"])
def test_other_characters_are_not_cjk(ch):
    assert not text.is_cjk_char(ch)


def test_one_splitter_for_pretraining_and_summaries():
    from bertforge.data import sentences

    assert sentences.split_sentences is text.split_sentences is summary.split_sentences
    assert corpus.has_cjk is text.has_cjk


def test_paragraphs_accents_and_abbreviations():
    assert text.split_sentences("One here.\n\nÉcole starts. Two e.g. this. Three") == [
        "One here.",
        "École starts.",
        "Two e.g. this.",
        "Three",
    ]
    assert text.split_sentences("See Eq. 3 and Sec. 4. Done.") == ["See Eq. 3 and Sec. 4.", "Done."]


def test_split_sentences_english():
    line = (
        'Dr. Smith went to Washington. He arrived at 3 p.m. on Monday! Did the U.S. Army come? "Yes." '
        "It cost 3.5 dollars."
    )
    assert text.split_sentences(line) == [
        "Dr. Smith went to Washington.",
        "He arrived at 3 p.m. on Monday!",
        "Did the U.S. Army come?",
        '"Yes."',
        "It cost 3.5 dollars.",
    ]
    assert text.split_sentences("A line that is one sentence.") == ["A line that is one sentence."]
    assert text.split_sentences("  no end mark  ") == ["no end mark"]
    assert text.split_sentences("   ") == []


def test_split_sentences_chinese():
    line = "今天天气很好。我们去公园吧！你去吗？“好的。”他说……然后走了"
    assert text.split_sentences(line) == [
        "今天天气很好。",
        "我们去公园吧！",
        "你去吗？",
        "“好的。”",
        "他说……",
        "然后走了",
    ]
    assert text.split_sentences("中文句子。English follows. 再来一句！") == [
        "中文句子。",
        "English follows.",
        "再来一句！",
    ]


def test_sentence_splitting_of_summaries():
    assert text.split_sentences("Dr. Smith arrived at 5 p.m. today. He was late! Was he? Yes.") == [
        "Dr. Smith arrived at 5 p.m. today.",
        "He was late!",
        "Was he?",
        "Yes.",
    ]
    assert text.split_sentences(
        "We use BERT (Devlin et al., 2019). It works, e.g. on SQuAD. See Fig. 2 for details."
    ) == ["We use BERT (Devlin et al., 2019).", "It works, e.g. on SQuAD.", "See Fig. 2 for details."]
    assert text.split_sentences("今天天气很好。我们去公园吧！你觉得呢？好的") == [
        "今天天气很好。",
        "我们去公园吧！",
        "你觉得呢？",
        "好的",
    ]
    assert text.split_sentences("他说：“你好。”然后走了。") == ["他说：“你好。”", "然后走了。"]
    assert text.split_sentences("A title\n\nThe first sentence here") == ["A title", "The first sentence here"]
    assert text.split_sentences("   ") == []
