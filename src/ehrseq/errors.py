"""Exceptions that mean "the user gave us something wrong", as opposed to a bug."""


class InputError(Exception):
    """Bad input from the user: the CLI prints the message and exits 2, no traceback."""


class DataError(InputError):
    """A dataset on disk is missing a file or column, or has a wrong type; the message names which."""
