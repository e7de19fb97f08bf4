"""Errors every layer may raise and the CLI reports."""


class UserError(Exception):
    """A mistake the user can fix: `mlplatform` prints it as one line, no traceback, and exits 2."""
