"""The one exception type for user mistakes: the CLI prints its message on one line and exits non-zero."""


class MetatuneError(Exception):
    """A problem with the user's input (file, config, arguments), not a bug."""

    exit_code = 2
