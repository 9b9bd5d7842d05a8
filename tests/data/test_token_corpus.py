import pytest
import torch

from sanitycheck.data.token_corpus import (CONCEPTS, ConceptLabelError, WordCorpus, babi_concepts, concept_words,
                                           require_two_classes, sentiment_concepts, token_labels, token_labels_flat)
from sanitycheck.errors import DataError


def test_negation_scope_and_after_but_on_hand_made_sentences():
    words = "the plot was not good at times but the acting was never dull really".split()
    c = sentiment_concepts(words)
    #        the plot was not good at times but the acting was never dull really
    assert c["negation_scope"] == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    assert c["after_but"] == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    plain = sentiment_concepts("a great movie".split())
    assert plain == {"negation_scope": [0, 0, 0], "after_but": [0, 0, 0]}


def test_babi_concepts_on_hand_made_story():
    c = babi_concepts("mary went to the kitchen . john got the milk .".split())
    assert c["babi_entity"] == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert c["babi_location"] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]


def test_concept_words_deterministic_and_not_applicable_marked():
    a, b = concept_words(40, seed=0), concept_words(40, seed=0)
    assert a.checksum == b.checksum and a.words == b.words
    assert concept_words(40, seed=1).checksum != a.checksum
    assert set(a.concepts) == set(CONCEPTS)
    n_sent = a.meta["n_sentiment"]
    assert all(v == -1 for row in a.concepts["babi_entity"][:n_sent] for v in row)
    assert all(v == -1 for row in a.concepts["negation_scope"][n_sent:] for v in row)
    assert all(v == -1 for row in a.concepts["review_sentiment"] for v in row)
    assert (a.labels[:n_sent] >= 0).all() and (a.labels[n_sent:] == -1).all()
    for c in ("negation_scope", "after_but", "babi_entity", "babi_location"):
        flat = torch.tensor([v for row in a.concepts[c] for v in row])
        require_two_classes(flat, c)  # every concept has both classes in a small corpus


def test_token_labels_follow_word_index():
    corpus = WordCorpus("t", [["a", "b", "c"], ["d"]], torch.tensor([1, 0]),
                        {"x": [[0, 1, 0], [1]]})
    word_index = torch.tensor([[-1, 0, 1, 2, -1], [-1, 0, 0, -1, -1]])  # bos, words, pad; two pieces of "d"
    lab = token_labels(corpus, word_index, "x")
    assert lab.dtype == torch.int8
    assert lab.tolist() == [[-1, 0, 1, 0, -1], [-1, 1, 1, -1, -1]]
    flat = token_labels_flat(corpus, torch.tensor([0, 0, 1]), torch.tensor([1, 2, 0]), "x")
    assert flat.tolist() == [1, 0, 1]
    with pytest.raises(ConceptLabelError, match="no concept 'y'"):
        token_labels(corpus, word_index, "y")


def test_one_class_concept_is_a_clear_error():
    with pytest.raises(ConceptLabelError, match="1 class.*both positives and negatives") as err:
        require_two_classes(torch.tensor([-1, 1, 1, -1]), "after_but")
    assert isinstance(err.value, DataError)
    mask = require_two_classes(torch.tensor([-1, 0, 1]), "c")
    assert mask.tolist() == [False, True, True]


def test_corpus_validates_alignment():
    with pytest.raises(DataError, match="2 labels for 3 words"):
        WordCorpus("bad", [["a", "b", "c"]], torch.tensor([0]), {"x": [[0, 1]]})


def test_review_words_label_every_word_and_are_seeded():
    from sanitycheck.data.token_corpus import review_words

    a = review_words(n=20, seed=0, sources=("rotten_tomatoes",), max_words=5)
    assert a.checksum == review_words(n=20, seed=0, sources=("rotten_tomatoes",), max_words=5).checksum
    assert all(len(w) <= 5 for w in a.words)
    assert all(set(row) == {int(lab)} for row, lab in zip(a.concepts["review_sentiment"], a.labels))
    assert set(a.labels.tolist()) == {0, 1}
