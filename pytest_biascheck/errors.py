"""The one exception type for bad user input: its message is a single line naming the thing and the fix."""


class BiascheckError(Exception):
    """Bad input from the user (file, option, config). The plugin turns it into a pytest usage error."""


class BiascheckWarning(UserWarning):
    """A result is computed but may mislead (for example, a region smaller than one CAM cell)."""
