"""One command for everything: ``minigpt COMMAND`` = ``python -m minigpt COMMAND`` = the older names
(``python train.py``, ``python sample.py``, ``python -m minigpt.<command>``)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt.cli import run_cli
from minigpt.cli.main import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
OLD_NAMES = {"train": "python train.py", "sample": "python sample.py", "data": "python -m minigpt.data",
             "classify": "python -m minigpt.classify", "evaluate": "python -m minigpt.evaluate",
             "plot": "python -m minigpt.plot", "export": "python -m minigpt.export",
             "tokenizer": "python -m minigpt.tokenizer"}


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
