"""Exceptions that mean "the user gave us something wrong", as opposed to a bug."""


class InputError(Exception):
    """Bad input from the user: the CLI prints the message and exits 2, no traceback."""


class DataError(InputError):
    """A dataset on disk is missing a file or column, or has a wrong type; the message names which."""


def one_line(text: str, limit: int = 300) -> str:
    """Text quoted from a file or a library error, safe for a one-line message: control characters escaped
    (a damaged file's bytes can hold newlines), clipped to `limit` characters."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))
    return text if len(text) <= limit else f"{text[:limit]}..."
