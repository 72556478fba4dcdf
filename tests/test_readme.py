"""The README's Python runs as written, and the files its commands name exist."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_the_library_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)  # it writes a folder
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "exported" / "config.json").is_file()


def test_the_files_the_commands_name_exist():
    paths = set(re.findall(r"\b((?:configs|data|docs|bench|tests|minigpt)/[\w./-]+\.(?:toml|txt|md|py))\b", README))
    assert "configs/shakespeare_char.toml" in paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing


def test_the_readme_stays_short():
    assert len(README.splitlines()) <= 200
