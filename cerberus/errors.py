"""Bad input: the one exception the command line turns into a single line on stderr and exit
code 2, and the small checks of typed values that every command shares."""

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


def positive(name: str, value: int | float | None) -> None:
    """Refuse an option that must be a positive number (None: not given); nan is not positive."""
    if value is not None and not value > 0:
        raise UserError(f"{name} must be positive, got {value}")


def int_list(option: str, text: str, minimum: int = 1) -> tuple[int, ...]:
    """``3,5,3`` as (3, 5, 3); with ``minimum`` 0 (device indices) each may appear once."""
    kind = "positive integers, e.g. 3,5,3" if minimum == 1 else "integers >= 0, e.g. 0,1"
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{option} {text!r} must be comma-separated {kind}") from None
    if not values or min(values) < minimum or len(set(values)) != len(values) and minimum == 0:
        raise UserError(f"{option} {text!r} must be comma-separated {kind}")
    return values
