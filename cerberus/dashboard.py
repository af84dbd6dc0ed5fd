"""optuna-dashboard on a study's storage, read-only: ``cerberus-search dashboard``.

Contract of :func:`serve`:

* It binds ``host:port`` first (port 0: any free one) and refuses, with a UserError, an
  address it cannot bind; then it prints the study's URL and serves until Ctrl-C.
* The dashboard answers only GET and HEAD. Every request that would write (create, rename or
  delete a study, tell a trial, set a user attr, save a note) gets 403, so opening it on a live
  study cannot change what the workers are writing; on SQLite, WAL (see
  :mod:`cerberus.storage`) keeps its reads from blocking them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from cerberus.errors import UserError

READS = ("GET", "HEAD")
WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


def read_only(app: WSGIApp) -> WSGIApp:
    """``app`` with every request other than GET and HEAD refused (403, a JSON reason)."""

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] in READS:
            return app(environ, start_response)
        body = json.dumps({"reason": "cerberus-search dashboard is read-only"}).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return guarded


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the dashboard polls: a line per request is noise
        pass


def serve(storage: optuna.storages.BaseStorage, study: str, host: str, port: int,
          announce: Callable[[str], None], stop: threading.Event) -> None:
    """Serve the dashboard of ``storage`` on ``host:port``; ``announce`` gets the study's URL
    once the socket is listening. Returns on KeyboardInterrupt, or within half a second of
    ``stop`` being set (Ctrl-C's flag: the interrupt itself is lost when it lands in a
    finaliser that garbage collection runs)."""
    import optuna_dashboard

    app = read_only(optuna_dashboard.wsgi(storage))
    try:
        server: WSGIServer = make_server(host, port, app, handler_class=_Quiet)
    except OSError as e:  # the port is taken, the host is not an address of this machine
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host") from None
    bound_port = server.server_address[1]
    study_id = storage.get_study_id_from_name(study)
    announce(f"http://{host}:{bound_port}/dashboard/studies/{study_id}")
    server.timeout = 0.5
    try:
        while not stop.is_set():
            server.handle_request()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def command(study: str, storage: str, host: str, port: int) -> None:
    """The ``dashboard`` command: serve until Ctrl-C."""
    from cerberus import signals
    from cerberus import storage as stores

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be 0..65535, got {port}")
    if stores.is_proxy(storage):
        raise UserError(f"dashboard --storage {storage}: optuna-dashboard reads the database itself, not through the "
                        f"proxy; give it the --storage the proxy serves")
    with stores.reading(storage) as store:
        stores.check_study(store, study, storage)
        serve(store, study, host, port,
              lambda url: print(f"optuna-dashboard of study {study!r} ({storage}), read-only: {url}  (Ctrl-C stops it)",
                                flush=True),
              signals.STOP)
