"""User-facing errors: the CLI prints the message on one line and exits with code 2."""


class UserError(ValueError):
    """Bad input from a user: the message names the field and the allowed values."""
