"""Where studies live: Optuna storage URLs, the default SQLite file, and opening a study safely.

The default is ``sqlite:///studies/cerberus.db`` (relative to the working directory); any
Optuna RDB URL works (``postgresql://...``), and so does ``grpc://HOST:PORT``, Optuna's gRPC
storage proxy (:func:`serve_proxy`, ``cerberus-search proxy``) in front of one: many workers,
one database connection pool. Optuna keeps no heartbeats through the proxy, so a search
through it keeps its own (:mod:`cerberus.search`, ``Pulse``); the dashboard reads the database
itself, not the proxy.

Reading never writes (:func:`reading`, for ``best``, ``report``, ``export``, ``dashboard``,
``studies`` and ``train --trial``): no table is created, the journal mode is left alone, and no
``-wal`` or ``-shm`` file is left where there was none. A SQLite file is checked before Optuna
sees it (missing, a folder, empty, not SQLite, SQLite without Optuna's tables: one line each)
and opened so that SQLite itself refuses every write (``PRAGMA query_only``; on a file or
folder this process cannot write, SQLite's read-only or immutable modes); a PostgreSQL
session is opened read-only.

Study names become folder names (:func:`artifact_dir`), so :func:`check_name` refuses the
empty name, one too long for a folder, and any that holds a path separator or ``..``.

A storage opened for a search has heartbeats: a running trial writes one every
``heartbeat`` seconds, and one silent for ``3 * heartbeat`` is failed by the next worker that
starts a trial and queued again (Optuna's ``RetryHeartbeatStaleTrialCallback``, through
:func:`cerberus.liveness.retry`), with the original's config, so a killed worker loses nothing
but the epochs since its last checkpoint; a trial whose workers died ``MAX_RETRY`` times is not.

SQLite files are switched to WAL, so a dashboard reading the file never blocks a worker, and
writers wait up to ``BUSY_TIMEOUT`` for the lock. pysqlite's own transaction handling stays:
it opens a transaction just before the first write, so a transaction never upgrades from a
stale read snapshot to a write, the case WAL answers with an immediate "database is locked"
(measured in benchmarks/RESULTS.md: an explicit ``BEGIN`` per session lost 57 of 457 trials
to it, ``BEGIN IMMEDIATE`` lost none but was slower than this).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import shlex
import socket
import sqlite3
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from typing import TYPE_CHECKING

from cerberus.errors import Failure, UserError, world_failure

if TYPE_CHECKING:  # optuna and SQLAlchemy are imported where used: `count` and `--version` never load them
    import optuna

DEFAULT_STORAGE = "sqlite:///studies/cerberus.db"
DEFAULT_STUDY = "cerberus"
HEARTBEAT = 10  # seconds between heartbeats of a running trial
MAX_RETRY = 2  # a trial whose worker dies this often is not queued again
BUSY_TIMEOUT = 120  # seconds a SQLite writer waits for the lock
CREATION_TRIES = 10  # opening a database that other processes are creating at the same moment
NAME_BYTES = 255  # a study name is a folder name: the longest most filesystems allow
OPTUNA_TABLES = {"studies", "trials", "version_info", "alembic_version"}
DRIVER_HINT = {"postgresql": 'pip install -e ".[postgres]" (or pip install "psycopg[binary]")'}
PROXY_SCHEME = "grpc://"
PROXY_HINT = 'pip install -e ".[grpc]" (or pip install grpcio "protobuf>=5.28.1")'
PROXY_WAIT = 10.0  # seconds a worker waits for the proxy to answer when it starts
PROXY_RECONNECT = 120.0  # seconds a worker's call waits for a proxy that went away to come back
DEFAULT_PROXY_PORT = 13000
PROXY_THREADS = 10  # Optuna's default: calls a database server serves at once


def is_proxy(url: str) -> bool:
    return url.startswith(PROXY_SCHEME)


def proxy_address(url: str) -> tuple[str, int]:
    """(host, port) of a ``grpc://HOST:PORT`` URL."""
    host, _, port = url[len(PROXY_SCHEME):].rstrip("/").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--storage {url!r} is not a proxy address; e.g. grpc://127.0.0.1:{DEFAULT_PROXY_PORT}")
    return host, int(port)


def open_proxy(url: str):  # type: ignore[no-untyped-def]
    """A client of the gRPC storage proxy at ``url``, once it answers (UserError if it does not)."""
    host, port = proxy_address(url)
    try:
        import grpc  # noqa: F401  (Optuna imports it lazily, at the first call)
    except ImportError:
        raise UserError(f"--storage {url}: the gRPC client is not installed; {PROXY_HINT}") from None
    import optuna

    from optuna.storages._grpc.client import GrpcClientCache

    class PatientProxy(optuna.storages.GrpcStorageProxy):
        """Optuna's gRPC client whose every call waits up to :data:`PROXY_RECONNECT` seconds for a
        proxy that went away to come back (gRPC's ``wait_for_ready``), instead of failing at once:
        a proxy restarted while workers use it is reconnected to. (Optuna's client builds its stub
        and cache in ``_setup``, which this wraps.)"""

        def _setup(self) -> None:
            super()._setup()
            self._stub = _Patient(self._stub, PROXY_RECONNECT)
            self._cache = GrpcClientCache(self._stub)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        proxy = PatientProxy(host=host, port=port)
    try:
        socket.create_connection((host, port), timeout=PROXY_WAIT).close()  # nothing listening: at once
        proxy.wait_server_ready(timeout=PROXY_WAIT)
    except (ConnectionError, OSError):
        raise UserError(f"--storage {url}: no storage proxy answers there within {PROXY_WAIT:.0f} s; start one with "
                        f"`cerberus-search proxy --storage DATABASE_URL --host {host} --port {port}`") from None
    return proxy


class _Patient:
    """A gRPC stub whose calls wait for the server to be ready, up to ``seconds``."""

    def __init__(self, stub: object, seconds: float) -> None:
        self._stub, self._seconds = stub, seconds

    def __getattr__(self, name: str) -> object:
        call = getattr(self._stub, name)
        return lambda request, **kwargs: call(request, wait_for_ready=True, timeout=self._seconds, **kwargs)


def proxy_backend(url: str, host: str, port: int) -> optuna.storages.RDBStorage:
    """The database a proxy will serve, opened (made, for a new SQLite file), once everything a
    user can get wrong is checked: a proxy URL, no gRPC installed, an address that cannot be bound."""
    if is_proxy(url):
        raise UserError(f"--storage {url}: give the database the proxy serves (sqlite:///... or postgresql://...), not a proxy")
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise UserError(f"proxy: the gRPC server is not installed; {PROXY_HINT}") from None
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            # as gRPC's server binds: a port whose last proxy just stopped (TIME_WAIT) is free to take again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise UserError(f"proxy: cannot listen on {host}:{port}: {e.strerror or e}") from None
    return open_storage(url, create=True)


def serve_proxy(storage: optuna.storages.RDBStorage, host: str, port: int, sqlite: bool) -> None:
    """Serve Optuna's gRPC storage proxy on ``host:port`` in front of ``storage`` until the
    process is stopped (KeyboardInterrupt)."""
    import optuna

    # SQLite takes one writer at a time, and threads that wait for its lock sleep in growing steps:
    # one thread serving every call is the better choice there (benchmarks/RESULTS.md).
    threads = 1 if sqlite else PROXY_THREADS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.run_grpc_proxy_server(storage, host=host, port=port,
                                              thread_pool=concurrent.futures.ThreadPoolExecutor(threads))


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, None for any other database (or a proxy)."""
    if is_proxy(url):
        proxy_address(url)
        return None
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"--storage {url!r} is not a database URL; e.g. {DEFAULT_STORAGE} or postgresql://user@host/db") from None
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise UserError(f"--storage {url!r} names no database file; e.g. {DEFAULT_STORAGE}")
    return Path(parsed.database)


def _retry_dead(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    from cerberus.liveness import retry  # liveness reads MAX_RETRY from here

    retry(study, trial)


def open_storage(url: str, create: bool = True, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """An RDBStorage for a search to write to; the SQLite file (and its folder) may be made, but
    an existing file must be empty or an Optuna database. ``heartbeat`` (seconds) turns on
    heartbeats and the retry of trials whose worker died. A proxy URL gives the proxy's client,
    which keeps no heartbeats (see the module docstring)."""
    if is_proxy(url):
        return open_proxy(url)
    path = sqlite_path(url)
    kwargs: dict = {}
    if path is not None:
        if path.exists():
            _check_sqlite_file(path, url, empty_ok=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the folder {path.parent} for {url}: {e.strerror}") from None
        if not os.access(path.parent, os.W_OK):
            raise UserError(f"cannot write to {path.parent}, the folder of {url}; choose another --storage")
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": BUSY_TIMEOUT}}
    if heartbeat is not None:
        kwargs.update(heartbeat_interval=heartbeat, grace_period=grace_period(heartbeat),
                      heartbeat_stale_trial_callback=_retry_dead)
    new = path is not None and not path.exists()
    try:
        storage = _rdb(url, kwargs)
        if path is not None:
            with storage.engine.connect() as connection:  # WAL is a property of the file: once is enough
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    except Exception:
        if new and path.exists() and path.stat().st_size == 0:  # the empty file a failed creation left (a full disk)
            path.unlink()
        raise
    return storage


@contextlib.contextmanager
def reading(url: str) -> Iterator[optuna.storages.RDBStorage]:
    """The storage at ``url`` opened so that nothing can be written through it (see the module
    docstring), closed on exit: SQLite deletes the ``-wal`` and ``-shm`` files it made for this
    reader when its last connection closes. Through a proxy, reading is all this process does."""
    if is_proxy(url):
        yield open_proxy(url)
        return
    path = sqlite_path(url)
    if path is None:
        storage = _rdb(url, {"skip_table_creation": True, "engine_kwargs": _read_only_server(url)})
    else:
        _check_sqlite_file(path, url, empty_ok=False)
        connect = _read_only_sqlite(path)
        storage = _rdb(url, {"skip_table_creation": True, "engine_kwargs": {"creator": connect}})
    try:
        yield storage
    finally:
        storage.remove_session()
        storage.engine.dispose()


@contextlib.contextmanager
def peeking(url: str) -> Iterator[optuna.storages.BaseStorage | None]:
    """What a search looks at before it writes: None where there is no database yet (a SQLite
    file that does not exist or is empty), the file read-only (:func:`reading`), or a server's
    or proxy's storage (whose tables the search creates anyway)."""
    path = sqlite_path(url)
    if path is None:
        yield open_storage(url, create=True)
    elif not path.exists() or path.is_file() and path.stat().st_size == 0:
        yield None
    else:
        with reading(url) as storage:
            yield storage


@contextlib.contextmanager
def read_study(name: str, url: str) -> Iterator[optuna.Study]:
    """An existing study, through :func:`reading`; an unknown name lists the ones there are."""
    import optuna

    with reading(url) as storage:
        check_study(storage, name, url)
        yield optuna.load_study(study_name=name, storage=storage)


def check_study(storage: optuna.storages.BaseStorage, name: str, url: str) -> None:
    """Refuse (UserError) a study name that ``storage`` does not hold, listing those it does."""
    check_name(name)
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        have = ", ".join(shlex.quote(n) for n in sorted(names)) or "none"  # as pasted after --study
        raise UserError(f"no study named {name!r} in {url}; studies there: {have}")


def _rdb(url: str, kwargs: dict) -> optuna.storages.RDBStorage:
    import optuna
    import sqlalchemy.exc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for attempt in range(CREATION_TRIES):
            try:
                return optuna.storages.RDBStorage(url, **kwargs)
            except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, sqlite3.Error,
                    optuna.exceptions.StorageInternalError) as e:
                e = e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ else e
                if attempt < CREATION_TRIES - 1 and _lost_creation_race(e):
                    time.sleep(random.uniform(0.05, 0.3))  # the winner goes on creating tables meanwhile
                    continue
                world = world_failure(e)
                if world is not None:
                    raise Failure(f"cannot open storage {url}: {world}") from None
                raise UserError(_open_error(url, e)) from None
    raise AssertionError("unreachable")


def _open_error(url: str, e: Exception) -> str:
    import sqlalchemy.engine

    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if isinstance(e, ImportError) and backend in DRIVER_HINT:
        return f"cannot open storage {url}: the {backend} driver is not installed; {DRIVER_HINT[backend]}"
    if isinstance(e, ImportError):
        return f"cannot open storage {url}: no database driver for {backend} is installed"
    return f"cannot open storage {url}: {' '.join(str(e).split())[:300]}"


def _check_sqlite_file(path: Path, url: str, empty_ok: bool) -> None:
    """Refuse (UserError) a path that is not an Optuna SQLite database, reading it only."""
    if not path.exists():
        raise UserError(f"no study storage at {path} ({url}); run `cerberus-search run` first or pass --storage")
    if path.is_dir():
        raise UserError(f"--storage {url}: {path} is a folder, not a database file")
    # Never open() the file from Python: closing any descriptor of it drops every POSIX lock this
    # process holds on it, a writer's included, and another process may then delete the -wal
    # under that writer (https://www.sqlite.org/howtocorrupt.html, 2.2). SQLite reads the header.
    if not os.access(path, os.R_OK):
        raise UserError(f"--storage {url}: {path} cannot be read (permission denied)")
    if path.stat().st_size == 0:
        if empty_ok:
            return
        raise UserError(f"--storage {url}: {path} is empty (0 bytes), not an Optuna database; nothing was written to it")
    try:
        connection = _read_only_sqlite(path)()
        try:
            tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            connection.close()
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e):
            raise UserError(f"--storage {url}: {path} is not a SQLite database; give the .db file of a cerberus study") from None
        raise UserError(f"--storage {url}: {path} cannot be read as SQLite ({e})") from None
    # A search may find the tables half made by a worker that is creating them right now.
    foreign = tables and not tables & OPTUNA_TABLES if empty_ok else not OPTUNA_TABLES <= tables
    if foreign:
        raise UserError(f"--storage {url}: {path} is a SQLite database of another program (it has no Optuna "
                        f"tables); nothing was written to it")


def _read_only_sqlite(path: Path):  # type: ignore[no-untyped-def]
    """A connection factory that cannot write to ``path``. Where this process may write the file
    and its folder, a normal connection with ``query_only`` (its last close removes the ``-wal``
    and ``-shm`` files it made); elsewhere SQLite's read-only mode, which needs those files to
    exist already, or, when there are none (no writer has the file open), immutable mode.

    On a full disk a normal connection cannot make its ``-wal`` and ``-shm`` files and fails
    half-way, leaving them behind: then the ones it made are removed (none existed before, so no
    writer had the file open, and none can write on a full disk) and immutable mode reads it."""
    folder = path.resolve().parent
    writable = os.access(path, os.W_OK) and os.access(folder, os.W_OK)
    companions = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    existed = [c.exists() for c in companions]
    immutable = f"{path.resolve().as_uri()}?mode=ro&immutable=1"

    def normal() -> sqlite3.Connection:
        connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, check_same_thread=False)
        connection.execute("PRAGMA query_only = ON")
        return connection

    if writable and not any(existed):
        try:
            probe = normal()
            try:
                probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                probe.close()
        except sqlite3.OperationalError as e:
            if "disk i/o error" not in str(e).lower() and "full" not in str(e).lower():
                raise
            for companion in companions:
                companion.unlink(missing_ok=True)
            return lambda: sqlite3.connect(immutable, uri=True, timeout=BUSY_TIMEOUT, check_same_thread=False)

    def connect() -> sqlite3.Connection:
        if writable:
            return normal()
        mode = "ro" if existed[0] else "ro&immutable=1"
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT,
                               check_same_thread=False)

    return connect


def _read_only_server(url: str) -> dict:
    """Engine options that make every transaction of a database server read-only."""
    import sqlalchemy.engine

    if sqlalchemy.engine.make_url(url).get_backend_name() == "postgresql":
        return {"connect_args": {"options": "-c default_transaction_read_only=on"}}
    return {}


def check_name(name: str) -> None:
    """Refuse a study name that cannot be its folder's name (see :func:`artifact_dir`)."""
    allowed = "a non-empty name without '/', '\\' or '..', at most 255 bytes, e.g. cerberus or resnet-5m"
    if not name.strip():
        raise UserError(f"--study {name!r} is empty; give {allowed}")
    if "/" in name or "\\" in name or ".." in name or name == "." or "\0" in name:
        raise UserError(f"--study {name!r} holds a path separator or '..'; give {allowed}")
    if len(name.encode()) > NAME_BYTES:
        raise UserError(f"--study name is {len(name.encode())} bytes long; give {allowed}")


def grace_period(heartbeat: int) -> int:
    """Seconds a running trial may stay silent before it counts as dead: three heartbeats."""
    return 3 * heartbeat


def _lost_creation_race(e: Exception) -> bool:
    """Processes that open a new database at once (workers started together, a dashboard polling
    a worker's fresh file) all create Optuna's tables and insert its schema version; all but one
    fail, and find the schema complete on a second look."""
    import sqlalchemy.exc

    return isinstance(e, sqlalchemy.exc.IntegrityError) or (
        isinstance(e, sqlalchemy.exc.DBAPIError) and "already exists" in str(e.orig))


def artifact_dir(url: str, study: str) -> Path:
    """The study's folder for files (checkpoints, reports, final models): beside a SQLite file,
    ``<its folder>/<study>/``; for a database server, ``studies/<study>/`` under the working
    directory (workers on several machines need it on a shared filesystem to resume each
    other's trials from a checkpoint)."""
    path = sqlite_path(url)
    return (path.parent if path is not None else Path("studies")) / study


def proxy_command(storage: str, host: str, port: int) -> int:
    """The ``proxy`` command: serve until Ctrl-C or SIGTERM; its exit code."""
    import sys

    from cerberus import signals

    if not 0 < port <= 65535:
        raise UserError(f"--port must be 1..65535, got {port}")
    backend = proxy_backend(storage, host, port)
    print(f"storage proxy for {storage} on grpc://{host}:{port} (Ctrl-C stops it); workers: "
          f"cerberus-search run --storage grpc://{host}:{port} --study NAME", file=sys.stderr, flush=True)
    try:
        serve_proxy(backend, host, port, sqlite=sqlite_path(storage) is not None)
    except KeyboardInterrupt:
        print(f"proxy stopped ({signals.name()}); workers using it wait for it (or fail) until it is back",
              file=sys.stderr)
        return signals.exit_code()
    return 0
