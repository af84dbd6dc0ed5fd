"""The one exception the command line turns into a single line on stderr and exit code 2."""

from pathlib import Path


class UserError(Exception):
    """Bad input from the user: an option, a file, a study name. The message is the whole story:
    what is wrong and what is allowed, in one line, with no traceback."""


def read_text(path: Path, what: str, missing: str = "") -> str:
    """The text of a file the user named (``what``: how to call it, e.g. ``--config x.json``);
    a file that is not there, or not readable text, is a UserError (``missing`` is added to the
    first: where to look instead)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise UserError(f"{what} does not exist{missing}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what} cannot be read: {e}") from None
