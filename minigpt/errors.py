"""The one exception type that minigpt raises for problems a user can fix."""


class MiniGPTError(ValueError):
    """A problem with user input: a config value, a file, a checkpoint, a piece of text.

    The message always names what is wrong (the field, file, key or value) and what was expected.
    The command-line tools print it on one line without a traceback (``--debug`` shows it).
    It subclasses ``ValueError`` so code that already catches ``ValueError`` keeps working.
    """


class MiniGPTWarning(RuntimeWarning):
    """Something asked for works but is likely not what the user wants (e.g. bf16 on a CPU without
    native bf16 matmuls). The command-line tools print it as one ``warning:`` line."""
