"""Zero- and few-shot classification with the language model alone (no training): score each label
word after a prompt holding k labelled examples, pick the likeliest, raw and with contextual
calibration. Same splits as the config.

    python bench/lm_baseline.py configs/finetune_sms_spam.toml --label_words ham=normal spam=spam --shots 0 4
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from minigpt.config_schema import build_config
from minigpt.infer.predict import calibrate_scores, few_shot_prompts, score_label_words
from minigpt.loading import load_model
from minigpt.metrics import classification_report
from minigpt.train.finetune import ClassifyConfig, load_splits

CONTENT_FREE = ["N/A", "", "[MASK]"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--label_words", nargs="+", required=True, help="label=word pairs, e.g. 0=negative 1=positive")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 4], help="examples in the prompt (balanced across labels)")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N test texts (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = build_config(ClassifyConfig, args.config, args.overrides)
    words = dict(pair.split("=", 1) for pair in args.label_words)
    train, val, test, names = load_splits(cfg)
    final = test or val
    texts, labels = final.texts, final.labels
    if args.limit:
        texts, labels = texts[: args.limit], labels[: args.limit]
    model, tok = load_model(cfg.init_from, "cpu")
    torch.set_grad_enabled(False)
    ids = {n: i for i, n in enumerate(names)}
    for k in args.shots:
        rng = random.Random(args.seed)
        pool = {n: [t for t, label in zip(train.texts, train.labels) if label == n and len(t) < 200] for n in names}
        examples = [(rng.choice(pool[names[i % len(names)]]), words[names[i % len(names)]]) for i in range(k)]
        rng.shuffle(examples)
        start = time.perf_counter()
        label_words = [words[n] for n in names]
        scores = score_label_words(model, tok, few_shot_prompts(texts, examples), label_words, torch.device("cpu"))
        prior = score_label_words(model, tok, few_shot_prompts(CONTENT_FREE, examples), label_words, torch.device("cpu"))
        seconds = time.perf_counter() - start
        for name, final_scores in (("", scores), (" calibrated", calibrate_scores(scores, prior))):
            report = classification_report([ids[x] for x in labels], final_scores.argmax(-1).tolist(), names)
            print(f"{k}-shot{name}: accuracy {report['accuracy']:.4f}, macro F1 {report['macro avg']['f1-score']:.4f} "
                  f"on {len(texts)} texts ({seconds:.0f}s)")


if __name__ == "__main__":
    main()
