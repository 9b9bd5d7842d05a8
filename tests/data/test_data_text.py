from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sanitycheck.data.text import (
    BABI_LOCATIONS,
    NEGATIVE_CUES,
    NEGATORS,
    POSITIVE_CUES,
    TextDataset,
    Vocabulary,
    build_vocabulary,
    load_babi,
    load_synthetic_sentiment,
    load_text_file,
    sentiment_rule,
    tokenize,
)
from sanitycheck.errors import DataError


# ------------------------------------------------------------------------------------ helpers (independent)
def sentences_of(tokens):
    out, cur = [], []
    for t in tokens:
        cur.append(t)
        if t == ".":
            out.append(cur)
            cur = []
    assert not cur, "story must end with '.'"
    return out


def interpret(sentences, query):
    """A tiny bAbI interpreter written independently of the generator."""
    person_at, holding_of, object_at = {}, {}, {}
    history = {}  # object -> list of distinct consecutive locations
    moves = {"moved", "went", "journeyed", "travelled"}
    gets = {"picked", "got", "grabbed", "took"}
    drops = {"dropped", "discarded", "put", "left"}

    def visit(obj, loc):
        h = history.setdefault(obj, [])
        if loc is not None and (not h or h[-1] != loc):
            h.append(loc)

    for s in sentences:
        who, verb, place_or_obj = s[0], s[1], s[-2]
        if verb in moves:
            person_at[who] = place_or_obj
            for obj, holder in holding_of.items():
                if holder == who:
                    object_at[obj] = place_or_obj
                    visit(obj, place_or_obj)
        elif verb in gets:
            holding_of[place_or_obj] = who
            if who in person_at:
                object_at[place_or_obj] = person_at[who]
                visit(place_or_obj, person_at[who])
        elif verb in drops:
            holding_of[place_or_obj] = None
            if who in person_at:
                object_at[place_or_obj] = person_at[who]
        else:
            raise AssertionError(f"unknown sentence {s}")
    if query[:2] == ["where", "is"] and len(query) == 4:
        return person_at.get(query[2])
    if query[:3] == ["where", "is", "the"]:
        return object_at.get(query[3])
    if query[:2] == ["where", "was"]:
        h = history.get(query[3], [])
        k = h.index(query[6])
        return h[k - 1] if k > 0 else None
    raise AssertionError(f"unknown query {query}")


# ----------------------------------------------------------------------------------------- bAbI
@pytest.mark.parametrize("task", [1, 2, 3])
def test_babi_answers_and_rationales(task):
    ds = load_babi(task, "train", n=400, seed=0)
    assert len(ds) == 400 and ds.classes == BABI_LOCATIONS and ds.meta["split"] == "train"
    lo, hi = (2, 10) if task in (1, 2) else (4, 14)
    for tokens, query, label, flags in zip(ds.texts, ds.queries, ds.labels.tolist(), ds.rationales):
        assert tokens == [t.lower() for t in tokens]
        sents = sentences_of(tokens)
        assert lo <= len(sents) <= hi
        # the answer is correct by construction
        assert interpret(sents, query) == BABI_LOCATIONS[label]
        # the rationale marks whole sentences: exactly `task` supporting facts
        support, pos = [], 0
        for s in sents:
            f = flags[pos : pos + len(s)]
            assert all(f) or not any(f)
            if all(f):
                support.append(s)
            pos += len(s)
        assert len(support) == task
        # the supporting sentences alone are enough to answer
        assert interpret(support, query) == BABI_LOCATIONS[label]
        if task == 1:  # the last sentence mentioning the asked person
            last = [s for s in sents if s[0] == query[2]][-1]
            assert support == [last]


def test_babi_determinism_and_splits():
    a = load_babi(2, "train", n=300, seed=0)
    b = load_babi(2, "train", n=300, seed=0)
    assert a.texts == b.texts and a.queries == b.queries and torch.equal(a.labels, b.labels)
    assert a.checksum == b.checksum and len(a.checksum) == 64
    c = load_babi(2, "train", n=300, seed=1)
    assert c.texts != a.texts and c.checksum != a.checksum
    # sample i depends only on (task, split, seed, i): a smaller n is a prefix
    small = load_babi(2, "train", n=50, seed=0)
    assert small.texts == a.texts[:50] and small.queries == a.queries[:50]
    assert small.checksum != a.checksum and a.head(50).checksum == a.checksum
    # train and test never share a (story, question), for any seed
    test = load_babi(2, "test", n=300, seed=0)
    keys = {(tuple(t), tuple(q)) for t, q in zip(a.texts + c.texts, a.queries + c.queries)}
    assert not keys & {(tuple(t), tuple(q)) for t, q in zip(test.texts, test.queries)}
    # the answer is not a constant: all six locations occur
    assert set(a.labels.tolist()) == set(range(6))


def test_babi_bad_arguments():
    with pytest.raises(DataError, match="1, 2 or 3"):
        load_babi(4)
    with pytest.raises(DataError, match="'train' or 'test'"):
        load_babi(1, split="val")
    with pytest.raises(DataError, match="non-negative"):
        load_babi(1, n=-1)


# ----------------------------------------------------------------------------------------- sentiment
def test_sentiment_labels_follow_from_rationale():
    ds = load_synthetic_sentiment("train", n=1000, seed=0)
    assert ds.classes == ["negative", "positive"] and ds.queries is None
    for tokens, label, flags in zip(ds.texts, ds.labels.tolist(), ds.rationales):
        assert 8 <= len(tokens) <= 30
        marked = [t for t, f in zip(tokens, flags) if f]
        cues = [t for t in marked if t in POSITIVE_CUES or t in NEGATIVE_CUES]
        negs = [t for t in marked if t in NEGATORS]
        assert len(cues) == 1 and len(negs) <= 1 and len(marked) == len(cues) + len(negs)
        pol = 1 if cues[0] in POSITIVE_CUES else -1
        if negs:
            pol = -pol
            # the negator directly precedes the cue
            idx = [i for i, f in enumerate(flags) if f]
            assert idx[1] == idx[0] + 1
        assert label == (1 if pol > 0 else 0)
        # the written-out rule (position aware) gives the same label
        assert sentiment_rule(tokens) == label
        if "but" in tokens:  # the deciding cue is in the clause after "but"
            assert min(i for i, f in enumerate(flags) if f) > tokens.index("but")


def test_sentiment_determinism():
    a = load_synthetic_sentiment("test", n=200, seed=3)
    b = load_synthetic_sentiment("test", n=200, seed=3)
    c = load_synthetic_sentiment("test", n=200, seed=4)
    assert a.texts == b.texts and a.checksum == b.checksum
    assert a.texts != c.texts and a.checksum != c.checksum
    tr = load_synthetic_sentiment("train", n=2000, seed=3)
    assert not {tuple(t) for t in a.texts} & {tuple(t) for t in tr.texts}


def _counts(ds, vocab):
    x = np.zeros((len(ds), len(vocab)), dtype=np.float64)
    for i, t in enumerate(ds.texts):
        for tok in t:
            x[i, vocab.index(tok)] += 1
    return x


def test_sentiment_needs_context_bag_of_words_fails():
    from sklearn.linear_model import LogisticRegression

    train = load_synthetic_sentiment("train")
    test = load_synthetic_sentiment("test")
    assert (len(train), len(test)) == (5000, 1000)
    vocab = Vocabulary.build(train.texts)
    clf = LogisticRegression(max_iter=2000).fit(_counts(train, vocab), train.labels.numpy())
    bow = float((clf.predict(_counts(test, vocab)) == test.labels.numpy()).mean())
    print(f"bag-of-words logistic regression test accuracy: {bow:.3f}")
    assert 0.4 <= bow < 0.75  # a bag of words cannot see which clause or which cue a negator belongs to

    # a linear model on context-aware features is (near) exact: the words of the clause after the last
    # "but", each marked when a negator precedes it ("not great" -> "not_great")
    def clause_bigrams(tokens):
        start = max((i + 1 for i, t in enumerate(tokens) if t == "but"), default=0)
        clause = tokens[start:]
        return [("not_" + t) if i and clause[i - 1] in NEGATORS else t for i, t in enumerate(clause)]

    bi_vocab = Vocabulary.build([clause_bigrams(t) for t in train.texts])

    def bi_counts(ds):
        x = np.zeros((len(ds), len(bi_vocab)))
        for i, t in enumerate(ds.texts):
            for g in clause_bigrams(t):
                x[i, bi_vocab.index(g)] += 1
        return x

    clf2 = LogisticRegression(max_iter=2000).fit(bi_counts(train), train.labels.numpy())
    ctx = float((clf2.predict(bi_counts(test)) == test.labels.numpy()).mean())
    print(f"context-aware linear model test accuracy: {ctx:.3f}")
    assert ctx > 0.98
    assert sum(sentiment_rule(t) == int(l) for t, l in zip(test.texts, test.labels)) == len(test)


# ----------------------------------------------------------------------------------------- vocabulary
def test_vocabulary_order_and_encode():
    texts = [["b", "a", "c"], ["a", "b"], ["a", "d"]]
    v = Vocabulary.build(texts)
    assert v.itos == ["<pad>", "<unk>", "a", "b", "c", "d"]  # (-count, token)
    assert Vocabulary.build(list(reversed(texts))) == v
    assert Vocabulary.build(texts, min_count=2).itos == ["<pad>", "<unk>", "a", "b"]
    ids, lengths = v.encode([["a", "zzz"], ["d", "c", "b"]])
    assert ids.dtype == torch.long and ids.tolist() == [[2, 1, 0], [5, 4, 3]]
    assert lengths.tolist() == [2, 3]
    ids, lengths = v.encode([["a"]], max_len=4)
    assert ids.tolist() == [[2, 0, 0, 0]] and lengths.tolist() == [1]
    with pytest.raises(DataError, match="index 1 has 3 tokens, more than max_len=2"):
        v.encode([["a"], ["a", "b", "c"]], max_len=2)
    ids, lengths = v.encode([["a"], ["a", "b", "c"]], max_len=2, truncate=True)
    assert ids.tolist() == [[2, 0], [2, 3]] and lengths.tolist() == [1, 2]
    with pytest.raises(DataError, match="empty text at index 1"):
        v.encode([["a"], []])
    with pytest.raises(DataError, match="token lists"):
        v.encode(["a", "b"])
    assert v.decode([2, 1, 0]) == ["a", "<unk>", "<pad>"]
    assert v.unk_rate([["a", "zzz"]]) == 0.5
    again = Vocabulary.from_json(v.to_json())
    assert again == v and again.sha256 == v.sha256
    assert Vocabulary.build(texts, min_count=2).sha256 != v.sha256
    with pytest.raises(DataError):
        Vocabulary.from_json("{not json")
    with pytest.raises(DataError):
        Vocabulary(["a", "<pad>", "<unk>"])


def test_build_vocabulary_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SANITYCHECK_CACHE", str(tmp_path))
    ds = load_babi(1, "train", n=100)
    v = build_vocabulary(ds)
    files = list((tmp_path / "text").glob("vocab-*.json"))
    assert len(files) == 1
    assert "where" in v and "mary" in v and "?" in v  # queries are included
    assert build_vocabulary(ds) == v
    files[0].write_text("garbage")
    assert build_vocabulary(ds) == v  # a corrupt cache is rebuilt
    assert Vocabulary.from_json(files[0].read_text()) == v
    assert build_vocabulary(ds, min_count=1000).itos == ["<pad>", "<unk>"]


# ----------------------------------------------------------------------------------------- user files
def test_tokenize():
    assert tokenize("Not GREAT, really! Don't.") == ["not", "great", ",", "really", "!", "don't", "."]


def test_text_file_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text('text,label\n"A fine, fine movie!",pos\nDull film,neg\n"so-so",neutral\n')
    ds = load_text_file(csv_path, split="train")
    assert ds.classes == ["neg", "neutral", "pos"] and ds.labels.tolist() == [2, 0, 1]
    assert ds.texts[0] == ["a", "fine", ",", "fine", "movie", "!"] and ds.texts[2] == ["so", "-", "so"]
    assert ds.meta["split"] == "train" and ds.meta["format"] == "csv"
    assert load_text_file(csv_path).checksum == ds.checksum

    jl = tmp_path / "test.jsonl"
    jl.write_text(json.dumps({"body": "Great!", "y": 10}) + "\n\n" + json.dumps({"body": "meh", "y": 2}) + "\n")
    d2 = load_text_file(jl, text_field="body", label_field="y")
    assert d2.classes == ["2", "10"] and d2.labels.tolist() == [1, 0]  # integer labels sort numerically

    with pytest.raises(DataError, match=r"label\(s\) \['10'\] not among the given classes"):
        load_text_file(jl, text_field="body", label_field="y", classes=["2", "3"])


def test_text_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_text_file(tmp_path / "nope.csv")
    p = tmp_path / "a.csv"
    p.write_text("sentence,label\nhello,1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\].*sentence"):
        load_text_file(p)
    p.write_text("text,label\nhello,1\n,0\n  ?? ,1\n  ,1\n")
    with pytest.raises(DataError, match=r"empty text in row\(s\) 2, 4") as ds_err:
        load_text_file(p)
    assert "3" not in str(ds_err.value).split("row(s)")[1].split("(")[0]  # "??" tokenizes to two tokens
    p.write_text("text,label\nhello,\n")
    with pytest.raises(DataError, match="missing label"):
        load_text_file(p)
    j = tmp_path / "b.jsonl"
    j.write_text('{"text": "hi", "label": 1}\n{"label": 0}\n')
    with pytest.raises(DataError, match=r"'text' missing on line\(s\) 2"):
        load_text_file(j)
    j.write_text('{"text": "hi", "label": 1}\nnot json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_text_file(j)
    t = tmp_path / "c.txt"
    t.write_text("x")
    with pytest.raises(DataError, match="format="):
        load_text_file(t)


def test_text_dataset_validation_and_head():
    with pytest.raises(DataError, match="rationale 0 has 1 flags for 2 tokens"):
        TextDataset("x", [["a", "b"]], torch.tensor([0]), ["c"], rationales=[[True]])
    with pytest.raises(DataError, match="labels must lie"):
        TextDataset("x", [["a"]], torch.tensor([3]), ["c"])
    ds = load_synthetic_sentiment("test", n=10)
    h = ds.head(4)
    assert len(h) == 4 and h.meta["head"] == 4 and h.checksum == ds.checksum and h.rationales == ds.rationales[:4]
    with pytest.raises(DataError, match="at most 10"):
        ds.head(11)
