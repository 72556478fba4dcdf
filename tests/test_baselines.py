"""The bag-of-words baselines in bench/: NBSVM (Wang & Manning 2012) against loops and plain
scikit-learn models written here, and both scripts end to end on a small synthetic review set."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import load_bench
from minigpt.config_schema import build_config
from minigpt.train.finetune import ClassifyConfig, load_splits

nbsvm = load_bench("nbsvm_baseline")
tfidf = load_bench("tfidf_baseline")

GOOD = ["great", "wonderful", "superb", "moving", "brilliant", "loved"]
BAD = ["awful", "boring", "terrible", "dull", "waste", "hated"]
FILLER = ("the film movie plot actor scene story director music ending cast camera and a of it was this "
          "that with for script character minutes time people really").split()


def synthetic_reviews(n: int, seed: int = 0) -> list[dict]:
    """Short reviews with `<br />` breaks: filler words, two or three words of their class, sometimes
    one of the other class, and "not <good word>" in some negative ones (a bigram that matters)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        own, other = (GOOD, BAD) if label == "pos" else (BAD, GOOD)
        words = rng.choices(FILLER, k=rng.randint(8, 20)) + rng.choices(own, k=rng.randint(1, 3))
        if rng.random() < 0.3:
            words.append(rng.choice(other))
        if label == "neg" and rng.random() < 0.3:
            words += ["not", rng.choice(GOOD)]
        rng.shuffle(words)
        cut = len(words) // 2
        text = " ".join(words[:cut]) + ". <br /><br />" + " ".join(words[cut:]) + rng.choice(["!", ".", "..."])
        rows.append({"text": text, "label": label})
    return rows


def write_config(tmp_path: Path, rows: list[dict], split: str = "0.6,0.2,0.2", labels: str = "neg,pos") -> Path:
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = tmp_path / "reviews.toml"
    config.write_text(f'task = "classify"\ntrain_file = "{data.as_posix()}"\ntext_column = "text"\n'
                      f'label_column = "label"\nlabels = "{labels}"\nsplit = "{split}"\nsplit_seed = 7\n',
                      encoding="utf-8")
    return config


def test_log_count_ratio_equals_a_loop():
    texts = ["good good good movie", "a good film, don't miss", "bad movie!", "not good at all", "bad bad plot"]
    positive = [True, True, False, False, False]
    vectorizer = nbsvm.make_vectorizer()
    counts = vectorizer.fit_transform(texts)
    vocab = vectorizer.vocabulary_
    assert {"good movie", "don't", "!", ",", "not good"} <= set(vocab)  # bigrams, apostrophes, punctuation
    assert counts[0, vocab["good"]] == 1  # binarized: "good" three times counts once

    dense = counts.toarray()
    alpha = 1.0
    p = [alpha + sum(1 for row, pos in zip(dense, positive) if pos and row[j] > 0) for j in range(len(vocab))]
    q = [alpha + sum(1 for row, pos in zip(dense, positive) if not pos and row[j] > 0) for j in range(len(vocab))]
    expected = [math.log((p[j] / sum(p)) / (q[j] / sum(q))) for j in range(len(vocab))]
    r = nbsvm.log_count_ratio(counts, np.array(positive), alpha)
    np.testing.assert_allclose(r, expected, rtol=1e-12)
    assert r[vocab["good"]] > 0 > r[vocab["bad"]]
    # raw counts give the same ratio as binary ones
    np.testing.assert_allclose(nbsvm.log_count_ratio(counts * 3, np.array(positive), alpha), expected, rtol=1e-12)


@pytest.mark.parametrize("classifier", ["svm", "lr"])
def test_beta_one_is_the_plain_classifier_on_scaled_features(classifier):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    rows = synthetic_reviews(240)
    texts, labels = [r["text"] for r in rows], np.array([r["label"] for r in rows])
    counts = nbsvm.make_vectorizer(strip_html=True).fit_transform(texts)
    positive = labels == "pos"
    # the reference: binarize, scale by r, fit the plain scikit-learn model on dense features
    binary = (counts.toarray() > 0).astype(np.float64)
    r = nbsvm.log_count_ratio(counts, positive)
    scaled = binary * r[None, :]
    if classifier == "svm":
        reference = LinearSVC(C=0.5, loss="squared_hinge", penalty="l2", dual=True, max_iter=10000, random_state=0)
    else:
        reference = LogisticRegression(C=0.5, max_iter=2000)
    reference.fit(scaled, positive.astype(int))
    tol = 1e-6 if classifier == "svm" else 1e-3

    model = nbsvm.fit_nbsvm(counts, labels, ("neg", "pos"), C=0.5, beta=1.0, classifier=classifier)
    np.testing.assert_allclose(model.decision_function(counts), reference.decision_function(scaled), atol=tol)
    assert (model.predict(counts) == np.where(reference.predict(scaled) == 1, "pos", "neg")).all()
    assert (model.predict(counts) == labels).mean() > 0.9

    # beta = 0.25: w' = 0.75 * mean|w| + 0.25 * w, the bias as trained
    w = reference.coef_.ravel()
    interpolated = 0.75 * np.abs(w).mean() + 0.25 * w
    np.testing.assert_allclose(model.with_beta(0.25).coef, interpolated, atol=tol)
    np.testing.assert_allclose(model.with_beta(0.25).decision_function(counts),
                               scaled @ interpolated + reference.intercept_[0], atol=tol * 10)


def test_which_class_is_positive_does_not_change_predictions():
    rows = synthetic_reviews(200, seed=1)
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    counts = nbsvm.make_vectorizer().fit_transform(texts)
    a = nbsvm.fit_nbsvm(counts, labels, ("neg", "pos"), C=1.0, beta=0.25)
    b = nbsvm.fit_nbsvm(counts, labels, ("pos", "neg"), C=1.0, beta=0.25)
    # the same problem mirrored: equal up to the solver's tolerance
    np.testing.assert_allclose(a.decision_function(counts), -b.decision_function(counts), atol=1e-4)
    assert (a.predict(counts) == b.predict(counts)).all()


def test_fit_nbsvm_rejects_other_labels():
    counts = nbsvm.make_vectorizer().fit_transform(["good", "bad", "meh"])
    with pytest.raises(nbsvm.MiniGPTError, match="two classes"):
        nbsvm.fit_nbsvm(counts, ["pos", "neg", "neutral"], ("neg", "pos"))


def splits(config: Path):
    train, val, test, names = load_splits(build_config(ClassifyConfig, str(config), []))
    return train, val, test, names


def test_nbsvm_script_end_to_end(tmp_path, capsys):
    from sklearn.metrics import f1_score

    config = write_config(tmp_path, synthetic_reviews(300, seed=2))
    out = tmp_path / "out" / "nbsvm.json"
    nbsvm.main([str(config), "--strip_html", "--C", "0.01", "1", "--beta", "0.25", "1", "--json", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))
    assert "accuracy" in capsys.readouterr().out

    train, val, test, names = splits(config)
    assert (result["n_train"], result["n_val"], result["n_test"]) == (len(train.texts), len(val.texts), len(test.texts))
    # the reference: every (C, beta) scored on val here, the best one evaluated on test
    vectorizer = nbsvm.make_vectorizer(strip_html=True)
    counts = vectorizer.fit_transform(train.texts)
    val_acc = {}
    for c in (0.01, 1.0):
        fitted = nbsvm.fit_nbsvm(counts, train.labels, ("neg", "pos"), C=c)
        for beta in (0.25, 1.0):
            val_acc[(c, beta)] = (fitted.with_beta(beta).predict(vectorizer.transform(val.texts)) == val.labels).mean()
    c, beta = max(val_acc, key=val_acc.get)  # first best, in grid order
    assert (result["C"], result["beta"]) == (c, beta)
    predicted = nbsvm.fit_nbsvm(counts, train.labels, ("neg", "pos"), C=c, beta=beta).predict(
        vectorizer.transform(test.texts))
    assert result["accuracy"] == pytest.approx((predicted == np.array(test.labels)).mean())
    assert result["macro_f1"] == pytest.approx(f1_score(test.labels, predicted, average="macro"))
    assert result["accuracy"] > 0.8 and result["seconds"] > 0


def test_tfidf_script_end_to_end(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    config = write_config(tmp_path, synthetic_reviews(300, seed=3))
    out = tmp_path / "tfidf.json"
    tfidf.main([str(config), "--analyzer", "word", "--ngram", "1", "2", "--strip_html", "--min_df", "2",
                "--C", "0.01", "10", "--json", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))

    train, val, test, names = splits(config)
    assert (result["n_train"], result["n_val"], result["n_test"]) == (len(train.texts), len(val.texts), len(test.texts))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2,
                                 preprocessor=lambda t: t.replace("<br />", " ").lower())
    features = vectorizer.fit_transform(train.texts)
    assert result["n_features"] == len(vectorizer.vocabulary_)
    models = {c: LogisticRegression(C=c, max_iter=2000).fit(features, train.labels) for c in (0.01, 10.0)}
    val_acc = {c: (m.predict(vectorizer.transform(val.texts)) == val.labels).mean() for c, m in models.items()}
    c = max(val_acc, key=val_acc.get)
    assert result["C"] == c
    predicted = models[c].predict(vectorizer.transform(test.texts))
    assert result["accuracy"] == pytest.approx((predicted == np.array(test.labels)).mean())
    assert result["macro_f1"] == pytest.approx(f1_score(test.labels, predicted, average="macro"))
    assert result["accuracy"] > 0.8


def test_bad_input_is_one_line(tmp_path, capsys):
    rows = synthetic_reviews(60) + [{"text": "it was fine", "label": "meh"} for _ in range(30)]
    three = write_config(tmp_path, rows, labels="neg,pos,meh")
    with pytest.raises(SystemExit):
        nbsvm.main([str(three)])
    err = capsys.readouterr().err
    assert "two classes" in err and err.count("\n") == 1

    two_parts = write_config(tmp_path, synthetic_reviews(60), split="0.8,0.2")
    for script in (nbsvm, tfidf):
        with pytest.raises(SystemExit):
            script.main([str(two_parts), "--C", "1", "10"])
        err = capsys.readouterr().err
        assert "test split is needed" in err and err.count("\n") == 1
