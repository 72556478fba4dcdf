"""NBSVM (Wang & Manning 2012, "Baselines and Bigrams: Simple, Good Sentiment and Topic Classification",
ACL): a linear SVM on binarized uni+bigram features scaled by the naive-Bayes log-count ratio, on
exactly the splits a minigpt classification config uses. Two classes only.

    python bench/nbsvm_baseline.py configs/imdb_classifier.toml [--key=value ...] [--strip_html] \\
        [--C 0.1 0.3 1] [--beta 0.25] [--json out/nbsvm_imdb.json]

The variant here is the paper's NBSVM: with x the binarized count vector of a text (1 where an
n-gram occurs), p = alpha + the sum of x over the positive training texts and q = alpha + the sum
over the negative ones, the log-count ratio is r = log((p / |p|_1) / (q / |q|_1)); an L2-regularised
squared-hinge SVM (scikit-learn's LinearSVC, liblinear) is trained on x * r (elementwise), and its
weights are interpolated as w' = (1 - beta) * mean(|w|) + beta * w (the bias is kept as trained);
beta = 1 is the plain SVM on the scaled features, beta = 0.25 the paper's choice. --classifier lr
trains an L2 logistic regression in place of the SVM (interpolated the same way). The second class
of the config (labels = "neg,pos": pos) is the positive one; the choice does not change predictions.

Several --C / --beta values are tried on the val split and the best val accuracy (ties: the first
listed) is reported on test; the test split is never used to choose. Prints test accuracy, macro F1
and per-class F1 and the wall time (from fitting the vectorizer to the last test prediction, grid
included); --json PATH writes the numbers. --key=value arguments override the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from minigpt.config_schema import build_config, config_help
from minigpt.errors import MiniGPTError
from minigpt.metrics import classification_report, format_report
from minigpt.train.finetune import ClassifyConfig, load_splits

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tfidf_baseline beside this script, however it is loaded
from tfidf_baseline import positive_float, positive_int, run_main  # noqa: E402
from tfidf_baseline import strip_html as strip_html_tags  # noqa: E402

TOKEN_PATTERN = r"\w+(?:'\w+)?|[^\w\s]"  # words (don't, it's as one token) and every punctuation mark on its own


def make_vectorizer(strip_html: bool = False, min_df: int = 1):
    """Binarized uni+bigram counts over lower-cased tokens (optionally with ``<br />`` made a space)."""
    from sklearn.feature_extraction.text import CountVectorizer

    preprocess = (lambda t: strip_html_tags(t).lower()) if strip_html else str.lower
    return CountVectorizer(binary=True, ngram_range=(1, 2), token_pattern=TOKEN_PATTERN, preprocessor=preprocess,
                           min_df=min_df)


def binarize(counts) -> sp.csr_matrix:
    """A float copy of ``counts`` with every nonzero entry set to 1."""
    x = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    x.eliminate_zeros()
    x.data[:] = 1.0
    return x


def log_count_ratio(counts, positive: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """r = log((p / |p|_1) / (q / |q|_1)), p and q the smoothed binarized feature counts of the
    positive and negative rows (``positive`` is a boolean mask over the rows)."""
    x = binarize(counts)
    positive = np.asarray(positive, dtype=bool)
    p = alpha + np.asarray(x[positive].sum(axis=0)).ravel()
    q = alpha + np.asarray(x[~positive].sum(axis=0)).ravel()
    return np.log(p / p.sum()) - np.log(q / q.sum())


def nbsvm_features(counts, r: np.ndarray) -> sp.csr_matrix:
    """The binarized counts scaled feature by feature by the log-count ratio: x * r."""
    return binarize(counts) @ sp.diags(r)


def interpolate(w: np.ndarray, beta: float) -> np.ndarray:
    """w' = (1 - beta) * mean(|w|) + beta * w: between naive Bayes (beta = 0) and the SVM (beta = 1)."""
    return (1.0 - beta) * np.abs(w).mean() + beta * w


def make_classifier(kind: str, C: float):
    """The linear model trained on the scaled features: the paper's L2 SVM, or logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if kind == "svm":
        return LinearSVC(C=C, loss="squared_hinge", penalty="l2", dual=True, max_iter=10000, random_state=0)
    if kind == "lr":
        return LogisticRegression(C=C, max_iter=2000)
    raise MiniGPTError(f"classifier must be svm or lr, got {kind!r}")


@dataclasses.dataclass
class NBSVM:
    """A fitted NBSVM: the log-count ratio, the trained weights and bias, and the interpolation beta."""

    r: np.ndarray
    w: np.ndarray  # as trained (beta = 1)
    intercept: float
    beta: float
    classes: tuple[str, str]  # (negative, positive)

    @property
    def coef(self) -> np.ndarray:
        return interpolate(self.w, self.beta)

    def with_beta(self, beta: float) -> "NBSVM":
        return dataclasses.replace(self, beta=beta)

    def decision_function(self, counts) -> np.ndarray:
        return nbsvm_features(counts, self.r) @ self.coef + self.intercept

    def predict(self, counts) -> np.ndarray:
        return np.where(self.decision_function(counts) > 0, self.classes[1], self.classes[0])


def fit_nbsvm(counts, labels, classes: tuple[str, str], C: float = 1.0, beta: float = 0.25, alpha: float = 1.0,
              classifier: str = "svm") -> NBSVM:
    """Fit NBSVM on count features of the training texts; ``classes`` = (negative, positive) label names."""
    labels = np.asarray(labels)
    unknown = sorted(set(labels.tolist()) - set(classes))
    if len(classes) != 2 or unknown:
        raise MiniGPTError(f"NBSVM needs two classes; got classes {list(classes)} and labels {unknown[:5]} outside them")
    positive = labels == classes[1]
    if positive.all() or not positive.any():
        raise MiniGPTError(f"NBSVM needs training texts of both classes {list(classes)}; only {labels[0]!r} is present")
    r = log_count_ratio(counts, positive, alpha)
    model = make_classifier(classifier, C).fit(nbsvm_features(counts, r), positive.astype(int))
    return NBSVM(r=r, w=model.coef_.ravel().copy(), intercept=float(model.intercept_[0]), beta=beta,
                 classes=(classes[0], classes[1]))


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config keys (--key=value overrides):\n" + config_help(ClassifyConfig))
    parser.add_argument("config", help="a task = \"classify\" TOML config with two classes")
    parser.add_argument("overrides", nargs="*", help="--key=value overrides, as for train.py")
    parser.add_argument("--C", type=positive_float, nargs="+", default=[1.0],
                        help="inverse regularisation of the SVM; several: tuned on val (default 1, the paper's)")
    parser.add_argument("--beta", type=unit_interval, nargs="+", default=[0.25],
                        help="interpolation w' = (1-beta)*mean|w| + beta*w; several: tuned on val (default 0.25)")
    parser.add_argument("--alpha", type=positive_float, default=1.0, help="smoothing of the log-count ratio")
    parser.add_argument("--classifier", default="svm", choices=["svm", "lr"])
    parser.add_argument("--min_df", type=positive_int, default=1, help="drop n-grams seen in fewer training texts")
    parser.add_argument("--strip_html", action="store_true", help="replace <br /> tags by spaces first")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    args, unknown = parser.parse_known_args(argv)
    args.overrides += unknown  # --key=value config overrides that argparse does not know
    return parser, args


def run(args: argparse.Namespace) -> dict:
    """Fit, tune C and beta on val, evaluate; print the report and return the numbers."""
    cfg = build_config(ClassifyConfig, args.config, args.overrides)
    train, val, test, names = load_splits(cfg)
    if len(names) != 2:
        raise MiniGPTError(f"{args.config}: NBSVM here is for two classes; this config has {len(names)} "
                           f"({', '.join(names)})")
    if len(args.C) * len(args.beta) > 1 and test is None:
        raise MiniGPTError(f"{args.config}: several --C / --beta values are tuned on val, so a test split is needed "
                           "to report on (give three split fractions or a test_file), or give one of each")
    final = test or val
    start = time.perf_counter()
    vectorizer = make_vectorizer(args.strip_html, args.min_df)
    counts = vectorizer.fit_transform(train.texts)
    val_counts = vectorizer.transform(val.texts)
    val_labels = np.asarray(val.labels)
    best, val_accuracy = None, {}
    for c in args.C:
        fitted = fit_nbsvm(counts, train.labels, (names[0], names[1]), C=c, alpha=args.alpha,
                           classifier=args.classifier)
        for beta in args.beta:
            model = fitted.with_beta(beta)
            val_accuracy[(c, beta)] = float((model.predict(val_counts) == val_labels).mean())
            if best is None or val_accuracy[(c, beta)] > val_accuracy[best[0]]:
                best = ((c, beta), model)
    (chosen_c, chosen_beta), model = best
    predicted = model.predict(vectorizer.transform(final.texts))
    seconds = time.perf_counter() - start

    ids = {n: i for i, n in enumerate(names)}
    report = classification_report([ids[x] for x in final.labels], [ids[x] for x in predicted], names)
    evaluated_on = "test" if test else "val"
    if len(val_accuracy) > 1:
        print("val accuracy by (C, beta): " + ", ".join(f"({c:g}, {b:g}) {a:.4f}" for (c, b), a in val_accuracy.items()))
    print(f"NBSVM ({'SVM' if args.classifier == 'svm' else 'logistic regression'} on log-count-ratio-scaled binarized "
          f"uni+bigrams, {len(vectorizer.vocabulary_):,} features; C={chosen_c:g}, beta={chosen_beta:g}); "
          f"train {len(train.texts):,}, evaluated on {evaluated_on} {len(final.texts):,}; {seconds:.1f}s")
    print(format_report(report, names))
    return {"baseline": f"nb{args.classifier}", "config": args.config, "evaluated_on": evaluated_on,
            "accuracy": report["accuracy"], "macro_f1": report["macro avg"]["f1-score"],
            "C": chosen_c, "beta": chosen_beta,
            "val_accuracy": [{"C": c, "beta": b, "accuracy": a} for (c, b), a in val_accuracy.items()],
            "seconds": seconds, "n_train": len(train.texts), "n_val": len(val.texts), "n_test": len(final.texts),
            "n_features": len(vectorizer.vocabulary_),
            "options": {"alpha": args.alpha, "classifier": args.classifier, "min_df": args.min_df,
                        "strip_html": args.strip_html, "overrides": args.overrides}}


def main(argv: list[str] | None = None) -> None:
    run_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
