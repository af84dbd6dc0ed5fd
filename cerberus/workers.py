"""Several workers on one study: each a separate ``cerberus-search worker`` process.

A worker gets its :class:`Job` (the study, the storage, its own :class:`~cerberus.loop.RunOptions`
with its device) as one JSON object in the environment variable :data:`JOB_ENV`, joins the
study through the storage as a worker on another machine would, and searches the space the
study stores. The parent waits for all of them, passes Ctrl-C on, and exits with the worst code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from cerberus.errors import UserError
from cerberus.loop import RunOptions

JOB_ENV = "CERBERUS_JOB"
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # the exit codes of a run stopped by a signal


@dataclass(frozen=True)
class Job:
    study: str
    storage: str
    heartbeat: int
    options: RunOptions
    index: int  # the worker's number: its lines' prefix, its sampler's seed offset

    def to_json(self) -> str:
        return json.dumps({"study": self.study, "storage": self.storage, "heartbeat": self.heartbeat,
                           "options": json.loads(self.options.to_json()), "index": self.index})

    @classmethod
    def from_env(cls) -> Job:
        try:
            raw = json.loads(os.environ[JOB_ENV])
            return cls(raw["study"], raw["storage"], raw["heartbeat"], RunOptions(**raw["options"]), raw["index"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"`worker` is what `cerberus-search run --workers K` starts, with its job in ${JOB_ENV}; "
                            f"run `cerberus-search run` instead") from None


def spawn(jobs: list[Job]) -> int:
    """Run one worker process per job and wait for all of them. The workers that train on the
    CPU share its cores: each gets an equal share of threads, since torch's default (all cores
    each) makes them thrash. A SIGINT or SIGTERM of this process is passed on to every worker (a
    terminal's Ctrl-C reaches them already; a ``kill`` of this process, or Slurm's SIGTERM of its
    main process, does not). Returns 128 + that signal's number if interrupted, else the largest
    exit code of the workers."""
    from cerberus import signals

    env = {**os.environ}
    cpu_workers = sum(job.options.device == "cpu" for job in jobs)
    if cpu_workers:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cpu_workers)))
    procs = [subprocess.Popen([sys.executable, "-m", "cerberus", "worker"], env={**env, JOB_ENV: job.to_json()})
             for job in jobs]
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
