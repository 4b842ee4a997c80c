"""The one exception type a user sees: the CLI prints its message on one line and exits with code 2."""

# What str.splitlines breaks a line at; a message that quotes user input (a column name, a template, a CoNLL line)
# shows these escaped, as repr does, so that the message stays one line whatever the input held.
LINE_BREAKS = {ord(character): repr(character)[1:-1] for character in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class TunelabError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message.translate(LINE_BREAKS))
