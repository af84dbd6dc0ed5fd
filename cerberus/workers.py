"""Several workers on one study: each a separate ``cerberus-search worker`` process.

A worker gets its :class:`Job` (the study, the storage, its own :class:`~cerberus.search.RunOptions`
with its device) as one JSON object in the environment variable :data:`JOB_ENV`, joins the
study through the storage as a worker on another machine would, and searches the space the
study stores. The parent waits for all of them, passes Ctrl-C on, and exits with the worst code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from cerberus.errors import UserError
from cerberus.search import RunOptions

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
    def from_json(cls, text: str) -> Job:
        raw = json.loads(text)
        return cls(raw["study"], raw["storage"], raw["heartbeat"], RunOptions(**raw["options"]), raw["index"])

    @classmethod
    def from_env(cls) -> Job:
        try:
            return cls.from_json(os.environ[JOB_ENV])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"`worker` is what `cerberus-search run --workers K` starts, with its job in ${JOB_ENV}; "
                            f"run `cerberus-search run` instead") from None


def for_device(job: Job, device: str) -> Job:
    """``job`` on ``device`` (``cpu``, ``cuda:N``). A GPU worker is given only its GPU: it sees
    GPU N as its ``cuda:0`` (:func:`environment`) and records N as the trial's ``gpu``."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        return dataclasses.replace(job, options=dataclasses.replace(job.options, device="cuda:0", gpu=index))
    return dataclasses.replace(job, options=dataclasses.replace(job.options, device=device))


def environment(job: Job, jobs: list[Job], base: dict[str, str], cores: int) -> dict[str, str]:
    """What worker ``job`` of ``jobs`` is started with, on a machine of ``cores`` CPU cores.

    * A GPU worker sees its GPU alone (``CUDA_VISIBLE_DEVICES``, numbered in PCI bus order as
      nvidia-smi numbers them): with every GPU visible, each worker would keep a CUDA context
      on GPU 0 too (250 to 570 MiB each, made by the first ``empty_cache``).
    * The CPU workers share the cores: each gets an equal share of threads, since torch's
      default (all cores each) makes them thrash.
    * With ``--compile``, the workers share the cores for compilation threads too.
    """
    env = {**base, JOB_ENV: job.to_json()}
    cpu_workers = sum(j.options.device == "cpu" for j in jobs)
    if cpu_workers:
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // cpu_workers)))
    if job.options.gpu is not None:
        env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=str(job.options.gpu))
    if job.options.compile:
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, cores // len(jobs))))
    return env


def spawn(jobs: list[Job]) -> int:
    """Run one worker process per job, each in its :func:`environment`, and wait for all of
    them. A SIGINT or SIGTERM of this process is passed on to every worker (a terminal's Ctrl-C
    reaches them already; a ``kill`` of this process, or Slurm's SIGTERM of its main process,
    does not). Returns 128 + that signal's number if interrupted, else the largest exit code of
    the workers."""
    from cerberus import signals

    share = cores()
    procs = [subprocess.Popen([sys.executable, "-m", "cerberus", "worker"], env=environment(job, jobs, dict(os.environ), share))
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


def cores() -> int:
    """The cores this process may run on: its CPU affinity (what Slurm or taskset grant), not
    the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
