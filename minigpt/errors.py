"""The one exception type that minigpt raises for problems a user can fix."""


class MiniGPTError(ValueError):
    """A problem with user input: a config value, a file, a checkpoint, a piece of text.

    The message always names what is wrong (the field, file, key or value) and what was expected.
    The command-line tools print it on one line without a traceback (``--debug`` shows it).
    It subclasses ``ValueError`` so code that already catches ``ValueError`` keeps working.
    """
