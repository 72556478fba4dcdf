"""Text in, token ids out: tokenizers, corpus preparation, token files for training, labelled text.

``python -m minigpt data`` prepares a corpus (see ``minigpt/cli/data.py``).
"""
