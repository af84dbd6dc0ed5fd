"""Stopping on a signal: Ctrl-C (SIGINT) and SIGTERM (what Slurm, Kubernetes, systemd and
``timeout`` send) end every command the same way.

Contract of :func:`handling`, which the command line wraps around each command:

* The first SIGINT or SIGTERM sets :data:`STOP` and raises KeyboardInterrupt in the main
  thread. A search ends its trial ``interrupted``, keeps its checkpoint and queues it again.
* A KeyboardInterrupt that lands in a finaliser run by garbage collection is swallowed (and
  would print as "unraisable"); :data:`STOP` is not, so long loops also check it.
* Further signals while stopping only set the flag again (and once the command is done they are
  ignored until the process has exited): stopping is a few storage writes
  (fail the trial, queue its retry) that must not be cut halfway. SIGKILL still ends the
  process at once; its trial is retried once its heartbeat goes stale.
* :func:`exit_code` is what a shell reports for the first signal: 128 + its number (130 for
  SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP = threading.Event()
_received: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    first = not _received
    _received.append(signum)
    STOP.set()
    if first:
        raise KeyboardInterrupt


def _unraisable(hook: object) -> None:
    if not issubclass(hook.exc_type, KeyboardInterrupt):  # type: ignore[attr-defined]
        sys.__unraisablehook__(hook)  # type: ignore[arg-type]


@contextlib.contextmanager
def handling() -> Iterator[threading.Event]:
    """Handle SIGINT and SIGTERM as above while the block runs (in the main thread only: a
    command run from another thread keeps Python's default); yields :data:`STOP`."""
    STOP.clear()
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    previous = [signal.signal(s, _on_signal) for s in SIGNALS], sys.unraisablehook
    sys.unraisablehook = _unraisable
    try:
        yield STOP
    finally:
        # After a signal the process is on its way out, and a late second one must not kill it
        # while it exits. Python resets a Python-level handler to the default as it finalises,
        # but leaves an ignored signal ignored.
        for s, handler in zip(SIGNALS, previous[0]):
            signal.signal(s, signal.SIG_IGN if _received else handler)
        sys.unraisablehook = previous[1]


def received() -> int:
    """The first signal received (SIGINT when none was: a KeyboardInterrupt raised otherwise)."""
    return _received[0] if _received else signal.SIGINT


def exit_code() -> int:
    return 128 + received()


def name() -> str:
    """``Ctrl-C`` or ``SIGTERM``: how to call what stopped the command."""
    return "Ctrl-C" if received() == signal.SIGINT else signal.Signals(received()).name
