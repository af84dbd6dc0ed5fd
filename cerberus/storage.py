"""Where studies live: Optuna storage URLs, the default SQLite file, and opening a study safely.

The default is ``sqlite:///studies/cerberus.db`` (relative to the working directory); any
Optuna RDB URL works (``postgresql://...``). A study that is only *read* (``best``) is never
created by reading: a missing SQLite file or study name is an error, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import sqlalchemy.engine
import sqlalchemy.exc

from cerberus.errors import UserError

DEFAULT_STORAGE = "sqlite:///studies/cerberus.db"
DEFAULT_STUDY = "cerberus"


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, None for any other database."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"--storage {url!r} is not a database URL; e.g. {DEFAULT_STORAGE} or postgresql://user@host/db") from None
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise UserError(f"--storage {url!r} names no database file; e.g. {DEFAULT_STORAGE}")
    return Path(parsed.database)


def open_storage(url: str, create: bool) -> optuna.storages.RDBStorage:
    """An RDBStorage for ``url``; with ``create`` the SQLite file (and its folder) may be made."""
    path = sqlite_path(url)
    kwargs: dict = {}
    if path is not None:
        if not create and not path.exists():
            raise UserError(f"no study storage at {path} ({url}); run `cerberus-search run` first or pass --storage")
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create the folder {path.parent} for {url}: {e.strerror}") from None
        # Several processes may write one file; wait for the lock instead of failing at once.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        raise UserError(f"cannot open storage {url}: {str(e).splitlines()[0]}") from None


def load_study(name: str, url: str) -> optuna.Study:
    """An existing study, read-only in spirit: an unknown name lists the ones there are."""
    storage = open_storage(url, create=False)
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        have = ", ".join(sorted(names)) or "none"
        raise UserError(f"no study named {name!r} in {url}; studies there: {have}")
    return optuna.load_study(study_name=name, storage=storage)
