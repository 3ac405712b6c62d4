"""The domain error the command layer turns into a one-line message and exit code 1."""


class FleetstateError(RuntimeError):
    """Something the user can act on; its message is the whole explanation."""
