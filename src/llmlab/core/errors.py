"""One error type for things a person did wrong or must fix.

The CLI prints an `LLMLabError` as a plain message (no traceback) and exits with
status 2; `--debug` shows the traceback. Library code raises it with a message that
says what was wrong and how to fix it.
"""


class LLMLabError(Exception):
    """An error with a message meant for a person, not a stack trace."""
