"""IMDb from nothing: a domain tokenizer, a leak-free in-domain corpus, pretraining, fine-tuning as a
classifier, the bag-of-words baselines and a report, each stage timed and resumable.

    python bench/imdb_pipeline.py                  # 80 min (AVX-512 EPYC) to 2.5 h (Xeon) on 2 cores, into out-imdb/
    python bench/imdb_pipeline.py --ablations      # then the ablation rows and the longer-budget points
    make imdb                                      # the first line

Reads ../shared/data/imdb/{train,unsup}.jsonl (--data). The classifier's train/val/test split is carved
out of train.jsonl by configs/imdb_classifier.toml; the tokenizer and the LM see unsup.jsonl and that
split's *training* texts only (never a val or test review). Settings live in configs/imdb_data.toml
(tokenizer and corpus), configs/imdb_lm.toml and configs/imdb_classifier.toml; ``--lm KEY=VALUE`` (and
``--classifier``, ``--tokenizer``, ``--corpus``) change one for this run. The resolved configs are written
to WORK/configs/ and every stage's command, wall time and outcome to WORK/pipeline.json.

Run the same command again after an interruption (Ctrl-C, a crash, the end of a session): finished stages
are skipped, corpus preparation continues where it stopped, and a training stage continues from its last
checkpoint (--resume). ``--only STAGE ...`` runs some stages alone (what they read from earlier stages must
be there). WORK/report.md holds the table at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
# What a training step of configs/imdb_lm.toml's model costs at GPT-2's 50,257-token vocabulary against
# the domain tokenizer's 8,192 (`python bench/vocab_cost.py`, 2026-12-03, Intel Xeon, 2 cores: 1.594
# against 0.655 s/step); the GPT-2-BPE ablation's LM takes max_iters / this, the domain LM's time.
GPT2_STEP_COST = 2.43


@dataclass
class Stage:
    name: str
    what: str
    command: list[str]
    done: Path  # the file a finished stage leaves
    out_dir: Path | None = None  # a training stage: continued with --resume when it holds a checkpoint
    ablation: bool = False
    scores: bool = False  # `done` is a JSON file with accuracy and macro F1 on the test split


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} to TOML")


def parse_value(text: str):
    """A --lm/--classifier value: a TOML literal (4, 3e-4, true, "x") or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def settings(pairs: list[str], flag: str) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = parse_value(value)
    return out


def write_config(path: Path, base: dict, changes: dict, comment: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {**base, **changes}
    path.write_text(f"# {comment}\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in merged.items()), encoding="utf-8")
    return path


def flags(options: dict) -> list[str]:
    """Command-line flags of a [tokenizer] / [corpus] table: key = [a, b] -> --key a b."""
    out = []
    for key, value in options.items():
        if isinstance(value, bool):
            out += [f"--{key}"] if value else []
        else:
            out += [f"--{key}", *(str(v) for v in (value if isinstance(value, list) else [value]))]
    return out


def plan(args: argparse.Namespace) -> list[Stage]:
    work, data = Path(args.work), Path(args.data)
    py = [sys.executable]
    data_cfg = tomllib.loads((CONFIGS / "imdb_data.toml").read_text(encoding="utf-8"))
    lm_base = tomllib.loads((CONFIGS / "imdb_lm.toml").read_text(encoding="utf-8"))
    clf_base = tomllib.loads((CONFIGS / "imdb_classifier.toml").read_text(encoding="utf-8"))
    unsup = str(data / "unsup.jsonl")

    clf = write_config(work / "configs" / "classifier.toml", clf_base,
                       {"train_file": str(data / "train.jsonl"), "init_from": str(work / "lm"),
                        "out_dir": str(work / "classifier"), **settings(args.classifier, "--classifier")},
                       "configs/imdb_classifier.toml as this pipeline runs it")
    tok_opts = {**data_cfg["tokenizer"], **settings(args.tokenizer, "--tokenizer")}
    corpus_opts = {**data_cfg["corpus"], **settings(args.corpus, "--corpus")}
    lm_changes = {"data_dir": str(work / "lm-data"), "out_dir": str(work / "lm"), **settings(args.lm, "--lm")}
    lm = write_config(work / "configs" / "lm.toml", lm_base, lm_changes, "configs/imdb_lm.toml as this pipeline runs it")

    def tokenizer_stage(name: str, out: Path, ablation=False) -> Stage:
        return Stage(name, "train the domain tokenizer (byte-level BPE) on unsup + the training split",
                     [*py, "-m", "minigpt", "tokenizer", "--input", unsup, "--texts_of", str(clf), "--out", str(out),
                      "--overwrite", *flags(tok_opts)], out / "tokenizer.json", ablation=ablation)

    def corpus_stage(name: str, tokenizer: str, out: Path, ablation=False) -> Stage:
        return Stage(name, f"prepare the LM corpus (unsup + the training split) with {Path(tokenizer).name}",
                     [*py, "-m", "minigpt", "data", "--input", unsup, "--texts_of", str(clf), "--tokenizer", tokenizer,
                      "--out", str(out), *flags(corpus_opts)], out / "meta.json", ablation=ablation)

    def train_stage(name: str, what: str, config: Path, out_dir: Path, done: str, ablation=False) -> Stage:
        return Stage(name, what, [*py, str(ROOT / "train.py"), str(config)], out_dir / done, out_dir, ablation,
                     scores=done == "report.json")

    def classifier_variant(name: str, what: str, changes: dict) -> Stage:
        config = write_config(work / "configs" / f"{name}.toml", tomllib.loads(clf.read_text(encoding="utf-8")),
                              {**changes, "out_dir": str(work / name)}, f"the classifier, {what}")
        return train_stage(name, f"fine-tune: {what}", config, work / name, "report.json", ablation=True)

    def baseline(name: str, script: str, what: str, extra: list[str]) -> Stage:
        out = work / f"{name}.json"
        return Stage(name, what, [*py, str(ROOT / "bench" / script), str(clf), "--json", str(out), *extra], out,
                     scores=True)

    stages = [
        tokenizer_stage("tokenizer", work / "tokenizer"),
        corpus_stage("corpus", str(work / "tokenizer"), work / "lm-data"),
        train_stage("lm", "pretrain the in-domain language model", lm, work / "lm", "ckpt_last.safetensors"),
        train_stage("classifier", "fine-tune the LM as a classifier", clf, work / "classifier", "report.json"),
        baseline("tfidf", "tfidf_baseline.py", "TF-IDF word 1-2-grams + logistic regression (C tuned on val)",
                 ["--analyzer", "word", "--ngram", "1", "2", "--min_df", "2", "--strip_html", "--C", "3", "10", "30", "100"]),
        baseline("nbsvm", "nbsvm_baseline.py", "NBSVM (Wang & Manning 2012), uni+bigrams (C and beta tuned on val)",
                 ["--strip_html", "--C", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "--beta", "0.25", "0.5", "1"]),
    ]
    if args.ablations:
        main_rule = (clf_base.get("long_text", "truncate"), clf_base.get("truncate", "head"))
        for rule, changes in ((("truncate", "head"), {"long_text": "truncate", "truncate": "head"}),
                              (("truncate", "head_tail"), {"long_text": "truncate", "truncate": "head_tail"}),
                              (("windows", main_rule[1]), {"long_text": "windows"})):
            if rule != main_rule:
                stages.append(classifier_variant(f"clf-{changes.get('truncate', 'windows')}" if rule[0] == "truncate"
                                                 else "clf-windows", f"long texts: {rule[0]} {rule[1]}", changes))
        shape = {k: lm_base[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "pos_embedding", "norm", "mlp",
                                         "activation", "bias", "tie_weights", "zero_init_proj") if k in lm_base}
        stages.append(classifier_variant("clf-scratch", "no pretraining (the same network from random weights)",
                                         {"init_from": "scratch", "tokenizer": str(work / "tokenizer"), **shape,
                                          **{k: v for k, v in lm_changes.items() if k in shape}}))
        clf_now = tomllib.loads(clf.read_text(encoding="utf-8"))  # a longer budget: one epoch more, warm-started
        stages.append(classifier_variant("clf-epoch2", "a second epoch, from the classifier above (its head kept), at "
                                         "half its learning rates",
                                         {"init_from": str(work / "classifier"),
                                          "learning_rate": clf_now["learning_rate"] / 2, "min_lr": clf_now["min_lr"] / 2}))
        lm_now = tomllib.loads(lm.read_text(encoding="utf-8"))  # the same time budget: fewer, dearer steps
        gpt2_lm = write_config(work / "configs" / "lm-gpt2.toml", lm_now,
                               {"data_dir": str(work / "lm-data-gpt2"), "out_dir": str(work / "lm-gpt2"),
                                "max_iters": round(lm_now["max_iters"] / GPT2_STEP_COST)},
                               f"the LM on GPT-2's BPE instead of the domain tokenizer, for the domain LM's time "
                               f"(a step costs {GPT2_STEP_COST}x)")
        stages += [corpus_stage("corpus-gpt2", "gpt2", work / "lm-data-gpt2", ablation=True),
                   train_stage("lm-gpt2", "pretrain the same LM on GPT-2 BPE tokens, in the same time", gpt2_lm,
                               work / "lm-gpt2", "ckpt_last.safetensors", ablation=True),
                   classifier_variant("clf-gpt2", "from the GPT-2-BPE LM", {"init_from": str(work / "lm-gpt2")})]
        # a longer budget on the LM's side: the LM trained as long again (continued from itself, a fresh optimizer
        # at half its learning rates, another seed so that it draws other windows), then the classifier from it
        lm_2x = write_config(work / "configs" / "lm-2x.toml", lm_now,
                             {"init_from": str(work / "lm"), "out_dir": str(work / "lm-2x"),
                              "seed": lm_seed(lm) + 1,
                              **{k: lm_now[k] / 2 for k in ("learning_rate", "min_lr", "muon_lr")}},
                             "the LM trained as long again, from itself, at half its learning rates")
        stages += [train_stage("lm-2x", "pretrain the LM as long again (continued, half the learning rates)", lm_2x,
                               work / "lm-2x", "ckpt_last.safetensors", ablation=True),
                   classifier_variant("clf-lm-2x", "from the LM trained twice as long", {"init_from": str(work / "lm-2x")})]
    return stages


def lm_seed(config: Path) -> int:
    """The seed an LM config trains with (its own, else the loop's default)."""
    from minigpt.config_schema import build_config
    from minigpt.train.pretrain import PretrainConfig

    return build_config(PretrainConfig, config).seed


def settings_of(stage: Stage) -> str:
    """What a stage's result depends on: its command and, for training, the config file it reads."""
    config = Path(stage.command[-1]) if stage.out_dir is not None else None
    text = " ".join(stage.command) + (config.read_text(encoding="utf-8") if config is not None else "")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def call(command: list[str]) -> int:
    """Run one stage and wait for it. A Ctrl-C or SIGTERM is passed on to it and the pipeline waits
    while it saves and stops (a training stage saves ckpt_last; run the pipeline again to continue)."""
    proc = subprocess.Popen(command)

    def forward(signum, frame) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def finished_training(out_dir: Path, config: Path) -> bool:
    """Whether out_dir's ckpt_last is already at the config's max_iters (nothing left to resume)."""
    from minigpt.checkpoint import load_checkpoint

    max_iters = tomllib.loads(config.read_text(encoding="utf-8")).get("max_iters")
    return max_iters is not None and load_checkpoint(out_dir / "ckpt_last.safetensors").meta.get("iter_num", 0) >= max_iters


def run_stage(stage: Stage, record: dict, log) -> None:
    entry = record["stages"].setdefault(stage.name, {"seconds": 0.0, "runs": 0, "done": False})
    command = list(stage.command)
    if stage.out_dir is not None and (stage.out_dir / "ckpt_last.safetensors").is_file():
        if stage.scores and finished_training(stage.out_dir, Path(stage.command[-1])):
            log(f"{stage.name}: trained to the end but stopped before its report; it is trained again")
            command.append("--overwrite")
        else:
            command.append("--resume")
    elif stage.out_dir is not None and stage.out_dir.exists():
        command.append("--overwrite")  # a run that stopped before its first checkpoint: nothing to keep
    entry.update(command=" ".join(command), what=stage.what, settings=settings_of(stage))
    log(f"\n=== {stage.name}: {stage.what}\n$ {entry['command']}")
    start = time.perf_counter()
    try:
        code = call(command)
    finally:
        entry["seconds"] += time.perf_counter() - start
        entry["runs"] += 1
    if code != 0:
        raise SystemExit(f"stage {stage.name} stopped (exit {code}) after {entry['seconds'] / 60:.1f} min in all; "
                         f"run the same command again to continue it")
    entry["done"] = stage.done.is_file()  # (an interrupted training exits 130, above)
    log(f"=== {stage.name}: {entry['seconds'] / 60:.1f} min")


def lm_val_loss(out_dir: Path) -> float | None:
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    vals = [json.loads(line)["val_loss"] for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and "val_loss" in json.loads(line)]
    return min(vals) if vals else None


def report(stages: list[Stage], record: dict, work: Path) -> str:
    rows = ["| stage | what | accuracy | macro F1 | wall time | command |", "|---|---|---|---|---|---|"]
    for stage in stages:
        entry = record["stages"].get(stage.name)
        if entry is None:
            continue
        acc = f1 = ""
        if stage.scores and stage.done.is_file():
            numbers = json.loads(stage.done.read_text(encoding="utf-8"))
            acc = f"{numbers['accuracy']:.2%}"
            f1 = numbers["macro_f1"] if "macro_f1" in numbers else numbers["macro avg"]["f1-score"]
            f1 = f"{f1:.4f}"
        elif stage.out_dir is not None and not stage.scores:  # a language model
            loss = lm_val_loss(stage.out_dir)
            acc = f"val loss {loss:.4f}" if loss is not None else ""
        rows.append(f"| {stage.name} | {stage.what} | {acc} | {f1} | {entry['seconds'] / 60:.1f} min"
                    f"{'' if entry['done'] else ' (unfinished)'} | `{entry['command']}` |")
    total = sum(record["stages"][s.name]["seconds"] for s in stages if s.name in record["stages"])
    text = "\n".join(rows) + f"\n\ntotal: {total / 60:.1f} min\n"
    (work / "report.md").write_text(text, encoding="utf-8")
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "imdb"),
                   help="folder with train.jsonl and unsup.jsonl (default ../shared/data/imdb)")
    p.add_argument("--work", default="out-imdb", help="folder for every output (default out-imdb)")
    p.add_argument("--ablations", action="store_true", help="also the ablation stages (long-text rules, no "
                   "pretraining, GPT-2 BPE) and two longer-budget points (a second classifier epoch; the LM "
                   "trained twice as long)")
    p.add_argument("--list", action="store_true", help="print the stages and their commands, run nothing")
    p.add_argument("--only", nargs="+", default=[], metavar="STAGE",
                   help="run just these stages (names as --list prints them), in the plan's order; what they read "
                   "from earlier stages must be there (e.g. --ablations --only corpus-gpt2 lm-gpt2 clf-gpt2)")
    for name in ("tokenizer", "corpus", "lm", "classifier"):
        p.add_argument(f"--{name}", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help=f"change a {name} setting (repeatable)")
    args = p.parse_args()
    for name in ("train.jsonl", "unsup.jsonl"):
        if not (Path(args.data) / name).is_file():
            raise SystemExit(f"{Path(args.data) / name} not found: --data must be a folder with train.jsonl and unsup.jsonl")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from minigpt.errors import MiniGPTError
    from minigpt.locks import hold_lock

    try:
        with hold_lock(work, "IMDb pipeline"):  # two pipelines in one folder would overwrite each other's record
            run_pipeline(args, work)
    except MiniGPTError as err:
        raise SystemExit(str(err)) from None


def run_pipeline(args: argparse.Namespace, work: Path) -> None:
    record_path = work / "pipeline.json"
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {"stages": {}}
    stages = plan(args)
    unknown = [name for name in args.only if name not in {s.name for s in stages}]
    if unknown:
        raise SystemExit(f"--only: no stage {', '.join(map(repr, unknown))} in this plan; its stages are "
                         f"{', '.join(s.name for s in stages)}" + ("" if args.ablations else " (more with --ablations)"))
    if args.list:
        for stage in stages:
            print(f"{stage.name}: {stage.what}\n    {' '.join(stage.command)}")
        return
    with open(work / "pipeline.log", "a", encoding="utf-8") as log_file:
        def log(line: str) -> None:
            print(line, flush=True)
            log_file.write(line + "\n")
            log_file.flush()

        for stage in stages:
            if args.only and stage.name not in args.only:
                continue
            entry = record["stages"].get(stage.name)
            if entry and entry.get("done") and stage.done.is_file():
                if entry.get("settings", settings_of(stage)) != settings_of(stage):
                    raise SystemExit(f"stage {stage.name} was done with other settings than this run's (see "
                                     f"{work / 'pipeline.json'}); to redo it, remove its output ({stage.done}) and "
                                     f"that of the stages after it, or give another --work")
                log(f"=== {stage.name}: done before ({entry['seconds'] / 60:.1f} min)")
                continue
            try:
                run_stage(stage, record, log)
            finally:
                tmp = record_path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
                os.replace(tmp, record_path)
        log("\n" + report(stages, record, work))


if __name__ == "__main__":
    main()
