"""Several workers on one study: each a separate ``cerberus-search run`` process.

A worker is the same command with ``--workers 1`` and its own device; it joins the study
through the storage, as a worker on another machine would, so nothing here is specific to one
machine. The parent waits for all of them, passes Ctrl-C on, and exits with the worst code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

WORKER_ENV = "CERBERUS_WORKER"  # a worker's index; also how a worker knows it is one
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # the exit codes of a run stopped by a signal


def worker_index() -> int | None:
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None else None


def spawn(commands: list[list[str]], cpu_workers: int) -> int:
    """Run one ``python -m cerberus`` process per argument list and wait for all of them.
    ``cpu_workers`` of them train on the CPU and share its cores: each gets an equal share of
    threads, since torch's default (all cores each) makes them thrash. A SIGINT or SIGTERM of
    this process is passed on to every worker (a terminal's Ctrl-C reaches them already; a
    ``kill`` of this process, or Slurm's SIGTERM of its main process, does not). Returns
    128 + that signal's number if interrupted, else the largest exit code of the workers."""
    from cerberus import signals

    env = {**os.environ}
    if cpu_workers:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cpu_workers)))
    procs = [
        subprocess.Popen([sys.executable, "-m", "cerberus", *args], env={**env, WORKER_ENV: str(i)})
        for i, args in enumerate(commands)
    ]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signals.received())
        for p in procs:
            p.wait()
        return signals.exit_code()
    return max(128 - c if c < 0 else c for c in codes)  # -N: killed by signal N, as a shell reports it
