"""python -m minigpt COMMAND: the command line is minigpt/cli/main.py."""

from minigpt.cli.main import entry

if __name__ == "__main__":
    entry()
