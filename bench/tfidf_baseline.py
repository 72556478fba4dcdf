"""The baseline a practical user tries first: TF-IDF features + logistic regression (scikit-learn),
on exactly the splits a minigpt classification config uses.

    python bench/tfidf_baseline.py configs/finetune_sms_spam.toml [--key=value ...] [--analyzer char_wb --ngram 2 5]
    python bench/tfidf_baseline.py configs/imdb_classifier.toml --analyzer word --ngram 1 2 --strip_html \\
        --C 1 3 10 30 --json out/tfidf_imdb.json

Several --C values are tried on the val split and the one with the best val accuracy (ties: the
first listed) is reported on test; the test split is never used to choose. Prints test accuracy,
macro F1 and per-class F1, and the wall time (seconds on this machine, from fitting the vectorizer
to the last test prediction, the whole C grid included). --json PATH writes the same numbers for a
pipeline to collect. --key=value arguments override the config, as for train.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from minigpt.config_schema import build_config, config_help
from minigpt.errors import MiniGPTError
from minigpt.metrics import classification_report, format_report
from minigpt.train.finetune import ClassifyConfig, load_splits

HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def strip_html(text: str) -> str:
    """``<br />`` line breaks (IMDb's reviews are full of them) replaced by spaces."""
    return HTML_BREAK.sub(" ", text)


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def true_false(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"true or false, got {text}")
    return text.lower() == "true"


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config keys (--key=value overrides):\n" + config_help(ClassifyConfig))
    parser.add_argument("config", help="a task = \"classify\" TOML config")
    parser.add_argument("overrides", nargs="*", help="--key=value overrides, as for train.py")
    parser.add_argument("--analyzer", default="char_wb", choices=["char", "char_wb", "word"])
    parser.add_argument("--ngram", type=positive_int, nargs=2, default=[2, 5], metavar=("MIN", "MAX"))
    parser.add_argument("--min_df", type=positive_int, default=1, help="drop n-grams seen in fewer training texts")
    parser.add_argument("--max_features", type=positive_int, default=None,
                        help="keep only the most frequent n-grams (default: all)")
    parser.add_argument("--sublinear_tf", type=true_false, default=True, metavar="true|false",
                        help="1 + log(tf) instead of raw counts (default true)")
    parser.add_argument("--strip_html", action="store_true", help="replace <br /> tags by spaces first")
    parser.add_argument("--C", type=positive_float, nargs="+", default=[10.0],
                        help="inverse regularisation of the logistic regression; several: tuned on val")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    args, unknown = parser.parse_known_args(argv)
    args.overrides += unknown  # --key=value config overrides that argparse does not know
    if args.ngram[0] > args.ngram[1]:
        parser.error(f"--ngram MIN MAX needs MIN <= MAX, got {args.ngram[0]} {args.ngram[1]}")
    return parser, args


def run(args: argparse.Namespace) -> dict:
    """Fit, tune C on val, evaluate; print the report and return the numbers."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    cfg = build_config(ClassifyConfig, args.config, args.overrides)
    train, val, test, names = load_splits(cfg)
    if len(args.C) > 1 and test is None:
        raise MiniGPTError(f"{args.config}: several --C values are tuned on val, so a test split is needed to "
                           "report on (give three split fractions or a test_file), or give one --C")
    final = test or val
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer=args.analyzer, ngram_range=tuple(args.ngram), sublinear_tf=args.sublinear_tf,
                                 min_df=args.min_df, max_features=args.max_features,
                                 preprocessor=(lambda t: strip_html(t).lower()) if args.strip_html else None)
    features = vectorizer.fit_transform(train.texts)
    val_features = vectorizer.transform(val.texts)
    best, val_accuracy = None, {}
    for c in args.C:
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced" if cfg.balance != "none" else None)
        clf.fit(features, train.labels)
        val_accuracy[c] = float((clf.predict(val_features) == val.labels).mean())
        if best is None or val_accuracy[c] > val_accuracy[best[0]]:
            best = (c, clf)
    chosen, clf = best
    predicted = clf.predict(vectorizer.transform(final.texts))
    seconds = time.perf_counter() - start

    ids = {n: i for i, n in enumerate(names)}
    report = classification_report([ids[x] for x in final.labels], [ids[x] for x in predicted], names)
    evaluated_on = "test" if test else "val"
    if len(args.C) > 1:
        print("val accuracy by C: " + ", ".join(f"C={c:g} {a:.4f}" for c, a in val_accuracy.items()))
    print(f"TF-IDF ({args.analyzer} {args.ngram[0]}-{args.ngram[1]}-grams, {len(vectorizer.vocabulary_):,} features) "
          f"+ logistic regression (C={chosen:g}); train {len(train.texts):,}, evaluated on {evaluated_on} "
          f"{len(final.texts):,}; {seconds:.1f}s")
    print(format_report(report, names))
    return {"baseline": "tfidf_logistic_regression", "config": args.config, "evaluated_on": evaluated_on,
            "accuracy": report["accuracy"], "macro_f1": report["macro avg"]["f1-score"], "C": chosen,
            "val_accuracy_by_C": {f"{c:g}": a for c, a in val_accuracy.items()}, "seconds": seconds,
            "n_train": len(train.texts), "n_val": len(val.texts), "n_test": len(final.texts),
            "n_features": len(vectorizer.vocabulary_),
            "options": {"analyzer": args.analyzer, "ngram": list(args.ngram), "min_df": args.min_df,
                        "max_features": args.max_features, "sublinear_tf": args.sublinear_tf,
                        "strip_html": args.strip_html, "overrides": args.overrides}}


def run_main(parse, run_, argv: list[str] | None) -> None:
    """A baseline's command: parse, run (a bad config is one ``error:`` line), write ``--json`` if asked."""
    parser, args = parse(argv)
    try:
        result = run_(args)
    except MiniGPTError as err:
        parser.exit(2, f"error: {err}\n")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    run_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
