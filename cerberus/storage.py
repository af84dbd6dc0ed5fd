"""Where studies live: Optuna storage URLs, the default SQLite file, and opening a study safely.

The default is ``sqlite:///studies/cerberus.db`` (relative to the working directory); any
Optuna RDB URL works (``postgresql://...``). A study that is only *read* (``best``) is never
created by reading: a missing SQLite file or study name is an error, and nothing is written.

A storage opened for a search has heartbeats: a running trial writes one every
``heartbeat`` seconds, and one silent for ``3 * heartbeat`` is failed by the next worker that
starts a trial and queued again (Optuna's ``RetryHeartbeatStaleTrialCallback``), with the
original's config, so a killed worker loses nothing but the epochs since its last checkpoint.

SQLite files are switched to WAL, so a dashboard reading the file never blocks a worker, and
writers wait up to ``BUSY_TIMEOUT`` for the lock. pysqlite's own transaction handling stays:
it opens a transaction just before the first write, so a transaction never upgrades from a
stale read snapshot to a write, the case WAL answers with an immediate "database is locked"
(measured in benchmarks/RESULTS.md: an explicit ``BEGIN`` per session lost 57 of 457 trials
to it, ``BEGIN IMMEDIATE`` lost none but was slower than this).
"""

from __future__ import annotations

import os
import random
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.storages import RetryHeartbeatStaleTrialCallback

from cerberus.errors import UserError

DEFAULT_STORAGE = "sqlite:///studies/cerberus.db"
DEFAULT_STUDY = "cerberus"
HEARTBEAT = 10  # seconds between heartbeats of a running trial
MAX_RETRY = 2  # a trial whose worker dies this often is not queued again
BUSY_TIMEOUT = 120  # seconds a SQLite writer waits for the lock
CREATION_TRIES = 10  # opening a database that other processes are creating at the same moment


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


def open_storage(url: str, create: bool, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """An RDBStorage for ``url``; with ``create`` the SQLite file (and its folder) may be made.
    ``heartbeat`` (seconds) turns on heartbeats and the retry of trials whose worker died."""
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
            if not os.access(path.parent, os.W_OK):
                raise UserError(f"cannot write to {path.parent}, the folder of {url}; choose another --storage")
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": BUSY_TIMEOUT}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat is not None:
            kwargs.update(heartbeat_interval=heartbeat, grace_period=grace_period(heartbeat),
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
        for attempt in range(CREATION_TRIES):
            try:
                storage = optuna.storages.RDBStorage(url, **kwargs)
                break
            except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
                if attempt < CREATION_TRIES - 1 and _lost_creation_race(e):
                    time.sleep(random.uniform(0.05, 0.3))  # the winner goes on creating tables meanwhile
                    continue
                raise UserError(f"cannot open storage {url}: {' '.join(str(e).split())[:300]}") from None
    if path is not None:
        with storage.engine.connect() as connection:  # WAL is a property of the file: once is enough
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def grace_period(heartbeat: int) -> int:
    """Seconds a running trial may stay silent before it counts as dead: three heartbeats."""
    return 3 * heartbeat


def _lost_creation_race(e: Exception) -> bool:
    """Processes that open a new database at once (workers started together, a dashboard polling
    a worker's fresh file) all create Optuna's tables and insert its schema version; all but one
    fail, and find the schema complete on a second look."""
    return isinstance(e, sqlalchemy.exc.IntegrityError) or (
        isinstance(e, sqlalchemy.exc.DBAPIError) and "already exists" in str(e.orig))


def load_study(name: str, url: str) -> optuna.Study:
    """An existing study, read-only in spirit: an unknown name lists the ones there are."""
    storage = open_storage(url, create=False)
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        have = ", ".join(sorted(names)) or "none"
        raise UserError(f"no study named {name!r} in {url}; studies there: {have}")
    return optuna.load_study(study_name=name, storage=storage)


def artifact_dir(url: str, study: str) -> Path:
    """The study's folder for files (checkpoints, reports, final models): beside a SQLite file,
    ``<its folder>/<study>/``; for a database server, ``studies/<study>/`` under the working
    directory (workers on several machines need it on a shared filesystem to resume each
    other's trials from a checkpoint)."""
    path = sqlite_path(url)
    return (path.parent if path is not None else Path("studies")) / study
