"""The baseline a practical user tries first: TF-IDF features + logistic regression (scikit-learn),
on exactly the splits a minigpt classification config uses.

    python bench/tfidf_baseline.py configs/finetune_sms_spam.toml [--analyzer char_wb --ngram 2 5]

Prints test accuracy, macro F1 and per-class F1, and the wall time (seconds, on this machine).
"""

from __future__ import annotations

import argparse
import time

from minigpt.config_io import build_config
from minigpt.train.classify import ClassifyConfig, load_splits
from minigpt.metrics import classification_report, format_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a task = \"classify\" TOML config")
    parser.add_argument("overrides", nargs="*", help="--key=value overrides, as for train.py")
    parser.add_argument("--analyzer", default="char_wb", choices=["char", "char_wb", "word"])
    parser.add_argument("--ngram", type=int, nargs=2, default=[2, 5], metavar=("MIN", "MAX"))
    parser.add_argument("--C", type=float, default=10.0, help="inverse regularisation of the logistic regression")
    args = parser.parse_args()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    cfg = build_config(ClassifyConfig, args.config, args.overrides)
    train, val, test, names = load_splits(cfg)
    final = test or val
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer=args.analyzer, ngram_range=tuple(args.ngram), sublinear_tf=True, min_df=1)
    features = vectorizer.fit_transform(train.texts)
    clf = LogisticRegression(C=args.C, max_iter=2000, class_weight="balanced" if cfg.balance != "none" else None)
    clf.fit(features, train.labels)
    predicted = clf.predict(vectorizer.transform(final.texts))
    seconds = time.perf_counter() - start
    ids = {n: i for i, n in enumerate(names)}
    report = classification_report([ids[x] for x in final.labels], [ids[x] for x in predicted], names)
    print(f"TF-IDF ({args.analyzer} {args.ngram[0]}-{args.ngram[1]}-grams) + logistic regression (C={args.C}); "
          f"train {len(train.texts):,}, evaluated on {'test' if test else 'val'} {len(final.texts):,}; {seconds:.1f}s")
    print(format_report(report, names))


if __name__ == "__main__":
    main()
