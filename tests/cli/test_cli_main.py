"""One command for everything: ``minigpt COMMAND`` = ``python -m minigpt COMMAND`` = the top-level
scripts (``python train.py``, ``python sample.py``) = each command's module run alone."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt.cli import run_cli
from minigpt.cli.main import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]
OLD_NAMES = {"train": "python train.py", "sample": "python sample.py"}  # the top-level scripts, run alone
OLD_NAMES.update({name: f"minigpt {name}" for name in ("data", "classify", "evaluate", "plot", "export", "tokenizer")})


def help_text(capsys, fn, argv) -> str:
    try:
        code = run_cli(fn, argv)
    except SystemExit as done:  # argparse's --help
        code = done.code
    assert code == 0
    return capsys.readouterr().out


def test_help_lists_every_command(capsys):
    text = help_text(capsys, main, ["--help"])
    assert all(f"  {name} " in text for name in COMMANDS) and set(COMMANDS) == set(OLD_NAMES)


@pytest.mark.parametrize("name", list(OLD_NAMES))
def test_each_command_is_the_same_under_both_names(capsys, name):
    ours = help_text(capsys, main, [name, "--help"])
    theirs = help_text(capsys, importlib.import_module(COMMANDS[name][0]).main, ["--help"])
    flat = lambda text: " ".join(text.split())  # noqa: E731  (argparse wraps usage by the name's length)
    same = lambda text: flat(text.replace(OLD_NAMES[name], f"minigpt {name}"))  # noqa: E731
    assert ours and same(ours) == same(theirs)


def test_an_unknown_command_is_one_line(capsys):
    assert run_cli(main, ["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown command 'trian'" in err[0] and "train" in err[0]


def test_console_script_and_module_behave_identically(tmp_path):
    script = Path(sys.executable).parent / "minigpt"
    if not script.exists():
        pytest.skip("the minigpt console script is not installed (pip install -e .)")
    args = ["plot", str(tmp_path / "nothing-here")]
    a = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    b = subprocess.run([sys.executable, "-m", "minigpt", *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr) and a.returncode != 0


@pytest.mark.parametrize("name", ["train", "sample", "evaluate", "classify"])
def test_help_names_every_hugging_face_family_read(capsys, name):
    """Every command that reads a Hugging Face folder says which families it reads (the list in
    minigpt.interop.hf, not a copy that a new family would leave behind)."""
    from minigpt.interop.hf import HF_FAMILIES

    try:
        run_cli(main, [name, "--help"])
    except SystemExit:  # argparse's --help exits; train's own help returns
        pass
    text = " ".join(capsys.readouterr().out.split())
    assert all(family in text for family in HF_FAMILIES.split(", ")), text[:600]


@pytest.mark.parametrize("name,sections", [
    ("train", ["model:", "run:", "optimisation:", "evaluation, logging, checkpoints:", "system:", "data:", "head:",
               "long texts:", "what trains:", "selection:"]),
    ("sample", ["what to read:", "what to generate:", "how to run:", "system:"]),
    ("data", ["what to read:", "what to write:", "how to run:"]),
    ("tokenizer", ["what to read:", "what to write:"]),
    ("classify", ["what to read:", "what to write:", "system:"]),
    ("evaluate", ["the model:", "the text:", "system:"]),
    ("export", ["what to read:", "what to write:"]),
])
def test_help_groups_the_keys_by_section(capsys, name, sections):
    """The command line stays flat (--n_layer=6); --help shows the keys under their sections, each key once."""
    text = help_text(capsys, main, [name, "--help"])
    headers = [line.strip() for line in text.splitlines() if line.strip().endswith(":") and not line.startswith(" " * 4)]
    assert all(s in headers for s in sections), headers
    keys = [line.split("=")[0].strip() for line in text.splitlines() if line.startswith("    --")]
    assert len(keys) == len(set(keys))  # a key shared by two tasks is listed once
    if name == "train":  # every key of every task is there, under one section
        from minigpt.train import TASKS
        import dataclasses
        assert {f"--{f.name}" for spec in TASKS.values() for f in dataclasses.fields(spec.schema)} == set(keys)
