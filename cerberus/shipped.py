"""The files of ``search/`` that come with cerberus, found by name wherever it is installed.

``search/`` is the top-level folder of the repository, where users read and edit the spaces; a
wheel carries the same files as ``cerberus/search/`` (see pyproject.toml). :func:`resolve` turns
what the user typed into a file: a bare name (``default``, ``smoke``, ``seed``) is the shipped
file of that name, anything else is a path.
"""

from __future__ import annotations

from pathlib import Path

import cerberus
from cerberus.errors import UserError

SPACE, CONFIG = ".toml", ".json"


def folder() -> Path:
    """The shipped files: inside the installed package, or the checkout's ``search/``."""
    package = Path(cerberus.__file__).resolve().parent
    inside = package / "search"
    return inside if inside.is_dir() else package.parent / "search"


def names(suffix: str) -> list[str]:
    """The names of the shipped files with ``suffix`` (``SPACE`` or ``CONFIG``), sorted."""
    return sorted(p.stem for p in folder().glob(f"*{suffix}"))


def resolve(value: str, suffix: str, option: str) -> Path:
    """The file ``value`` means: a shipped name, else a path, which must exist; a missing one is
    a UserError that lists the shipped names (``option``: how to call the value, e.g. ``--space``)."""
    if value in names(suffix):
        return folder() / f"{value}{suffix}"
    path = Path(value)
    if path.is_file():
        return path
    shipped = ", ".join(names(suffix))
    what = "is a folder" if path.is_dir() else "no such file"
    raise UserError(f"{option} {value!r}: {what}, and not a shipped name; shipped: {shipped} (or give a {suffix} file)")


def is_shipped(path: Path, name: str, suffix: str) -> bool:
    """Whether ``path`` is the shipped file ``name`` (the default space enqueues the seed)."""
    return path.resolve() == (folder() / f"{name}{suffix}").resolve()
