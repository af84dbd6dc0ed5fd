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


def one_length(epochs: int | None, budget: float | None) -> None:
    """Refuse ``--epochs`` and ``--budget`` (of ``run`` and ``train``) unless each is positive and at most one is given."""
    positive("--epochs", epochs)
    positive("--budget", budget)
    if epochs is not None and budget is not None:
        raise UserError("give --epochs or --budget, not both: a training's length is one or the other")


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


class Failure(Exception):
    """A failure of the world, not of the input: a full disk, a damaged file, a server that went
    away. One line on stderr and exit code 1, with no traceback."""


# errno values a full or failing disk gives, and what to tell the user
_DISK = {28: "no space left on the device", 122: "the disk quota is used up", 5: "an input/output error on the disk",
         30: "the file system is read-only"}


def world_failure(e: BaseException) -> str | None:
    """The one line for an exception that the world around cerberus caused, or None for any
    other: a full or failing disk (OSError, or SQLite's "database or disk is full"), a damaged
    database file, a storage proxy or database server that stopped answering. The exception's
    causes are read too: Optuna wraps SQLAlchemy's errors, which wrap SQLite's."""
    seen: BaseException | None = e
    while seen is not None:
        text = " ".join(str(seen).split())
        lowered = text.lower()
        if isinstance(seen, OSError) and seen.errno in _DISK:
            where = f" ({seen.filename})" if seen.filename else ""
            return f"{_DISK[seen.errno]}{where}: free some space (or give another --out or --storage) and run the same command again"
        if "database or disk is full" in lowered or "disk i/o error" in lowered:
            return ("the disk that holds the study is full (SQLite: database or disk is full); nothing more was written: "
                    "free some space and run the same command again")
        if "database disk image is malformed" in lowered or "file is not a database" in lowered:
            return ("the study's database file is damaged (SQLite: database disk image is malformed); restore it from "
                    "a copy, or give another --storage")
        if type(seen).__name__ in ("_InactiveRpcError", "RpcError") or "failed to connect to all addresses" in lowered:
            return ("the storage proxy stopped answering (gRPC: unavailable); start it again with the same --storage and "
                    "--port, then run the same command again")
        seen = seen.__cause__ or seen.__context__
    return None
