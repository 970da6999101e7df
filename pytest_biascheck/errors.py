"""The one exception type for bad user input: its message is a single line naming the thing and the fix."""

import re


class BiascheckError(Exception):
    """Bad input from the user (file, option, config). The plugin turns it into a pytest usage error.

    Its text is always one line: a DataLoader worker re-raises it with the worker's traceback
    around the message (only the message is kept), and line breaks in quoted input become spaces.
    """

    def __str__(self) -> str:
        text = super().__str__()
        if "\nOriginal Traceback" in text:
            text = text.rstrip().rsplit("\n", 1)[-1].split("BiascheckError: ", 1)[-1]
        return re.sub(r"\s*\n\s*", " ", text.strip())


class BiascheckWarning(UserWarning):
    """A result is computed but may mislead (for example, a region smaller than one CAM cell)."""
