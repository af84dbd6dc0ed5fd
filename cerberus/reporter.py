"""What ``run`` shows while it works: a live line on a terminal, plain lines anywhere else.

The running trial is read from its :class:`cerberus.fit.Tally`, the host-side counter
its training loop keeps: epoch, step within the epoch, images per second, time left. Reading
it never touches a device tensor, so watching a run adds no host sync to a CUDA step.

* On a terminal, one live line that rich redraws on its own a few times a second, with every
  finished trial printed above it.
* Off a terminal (a pipe, a log file, CI), or with a ``prefix`` (one of several workers sharing
  a terminal): plain lines. One per event (an epoch's end, a rejection, a failure, a finished
  trial) and, while a trial trains, the live line's text whenever :data:`DEFAULT_INTERVAL`
  seconds pass with nothing printed (``$CERBERUS_PROGRESS_SECONDS`` changes it).

Times left are plain arithmetic, so say what they assume: a trial's is its remaining steps at
its wall time per step so far; the run's is the trials still to train (``target`` less those
the study holds, as this process knows it) times the mean time of the trials this run trained,
the running one counted by its own time left. With other workers on the same study the run
ends sooner than that.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console

from cerberus.errors import UserError
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, Task, TimeElapsedColumn
from rich.progress import Progress as LiveProgress
from rich.table import Column
from rich.text import Text

if TYPE_CHECKING:  # the reporter only reads its fields; importing torch here would cost every import
    from cerberus.fit import Tally

INTERVAL_ENV = "CERBERUS_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0  # a log line at most this often while a trial trains: a heartbeat, not a flood
LIVE_REFRESH = 4  # redraws per second of the live line; each one reads the counter, not the device
BAR_COLUMNS = 120  # a terminal at least this wide shows the bar beside the live line's text


def interval_seconds() -> float:
    """Seconds between plain progress lines: ``$CERBERUS_PROGRESS_SECONDS``, else
    :data:`DEFAULT_INTERVAL`; a value that is not a positive number of seconds is a UserError."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise UserError(f"{INTERVAL_ENV}={text!r} is not a number of seconds; give a positive number, e.g. 30, or unset it")
    return value


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` (under 10 min), ``25 min``, ``3 h 05 min``: as precise as a guess deserves."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 3600:
        return f"{round(seconds / 60)} min"
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min"


def _trials(n: int) -> str:
    return f"{n} more trial{'' if n == 1 else 's'}"


class Ticker:
    """Calls ``tick()`` from its own thread each time ``interval`` seconds pass without a
    ``touch()`` (the caller touches it whenever it prints a line of its own), between ``start``
    and ``stop``; ``stop`` returns once the thread has ended. Also a context manager."""

    def __init__(self, interval: float, tick: Callable[[], None]) -> None:
        self.interval, self._tick = interval, tick
        self._stopped = threading.Event()
        self._last = time.monotonic()
        self._thread: threading.Thread | None = None

    def touch(self) -> None:
        self._last = time.monotonic()

    def start(self) -> None:
        self._stopped.clear()
        self.touch()
        # A daemon, so that a main thread that dies without stop() is not kept waiting on it.
        self._thread = threading.Thread(target=self._loop, name="cerberus-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Ticker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stopped.wait(max(self._last + self.interval - time.monotonic(), 0.01)):
            if time.monotonic() - self._last >= self.interval:
                self._tick()
                self.touch()


class _Line(ProgressColumn):
    """A column that asks for its text at every redraw, so the live line follows the counter."""

    def __init__(self, text: Callable[[], str]) -> None:
        # one row whatever the width: wrapped, the text ran on under the bar for three rows at 80 columns
        super().__init__(table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1))
        self._text = text

    def render(self, task: Task) -> Text:
        return Text(self._text())


class _Live:
    """The terminal: a live line redrawn by rich's own refresh thread; events only change it."""

    def __init__(self, reporter: Reporter, console: Console) -> None:
        bar = [BarColumn(bar_width=20)] if console.width >= BAR_COLUMNS else []  # narrower: its room goes to the text
        self._bar = LiveProgress(_Line(reporter.line), *bar, MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=console, transient=True, refresh_per_second=LIVE_REFRESH, expand=True)
        self._task = self._bar.add_task("", total=reporter.target, completed=reporter.done)

    def start(self) -> None:
        self._bar.start()

    def stop(self) -> None:
        self._bar.stop()

    def event(self, text: str) -> None:
        pass  # the line already shows the latest event (Reporter.line)

    def counted(self, done: int) -> None:
        self._bar.update(self._task, completed=done)


class _Plain:
    """A log: a line per event and, while a trial trains, one every ``interval`` seconds of silence."""

    def __init__(self, reporter: Reporter, console: Console, prefix: str, seconds: float) -> None:
        self._reporter, self._console, self._prefix = reporter, console, prefix
        self._ticker = Ticker(seconds, self._tick)

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def event(self, text: str) -> None:
        self._console.print(self._prefix + text, highlight=False, markup=False, soft_wrap=True)
        self._ticker.touch()

    def counted(self, done: int) -> None:
        pass  # the "trained" line said it

    def _tick(self) -> None:
        if self._reporter.training_now():
            self._console.print(self._prefix + self._reporter.line(), highlight=False, markup=False, soft_wrap=True)


class Reporter:
    """Told of every event of a run; prints finished trials and shows the running one.

    ``target`` is the number of trained trials the study should hold, ``done`` how many it
    holds already. Off a terminal (CI, a log file, a pipe), or with a ``prefix`` (one of
    several workers sharing a terminal), every event is one plain line, prefix first, and a
    training trial adds a line every ``interval`` seconds (default: :func:`interval_seconds`) with
    nothing printed. ``best`` is the study's best (accuracy, trial): :meth:`study_best` sets it
    from storage, so other workers' trials count; a trial this reporter sees complete with a
    higher accuracy raises it too.
    """

    def __init__(self, target: int, done: int, console: Console | None = None, prefix: str = "",
                 interval: float | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._prefix = prefix
        self.target, self.done = target, done
        self.rejected = 0
        self.best: tuple[float, int] | None = None
        self._trial: int | None = None  # the trial training now, and its counter
        self._progress: Tally | None = None
        self._val: tuple[float, int] | None = None  # its last validation accuracy, and the epoch
        self._last = "starting"  # the latest event, for the live line between trials
        self._seconds: list[float] = []  # train_seconds of the trials trained in this run
        if self.console.is_terminal and not prefix:
            self._view: _Live | _Plain = _Live(self, self.console)
        else:
            self._view = _Plain(self, self.console, prefix, interval_seconds() if interval is None else interval)

    def __enter__(self) -> Reporter:
        self._view.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._view.stop()

    # Events.

    def study_best(self, best: tuple[float, int] | None) -> None:
        """The study's best (accuracy, trial) as its storage holds it now; None: no completed trial."""
        self.best = best

    def training(self, trial: int, progress: Tally) -> None:
        """Trial ``trial`` starts training; ``progress`` is the counter its fit keeps."""
        self._trial, self._progress, self._val = trial, progress, None

    def epoch(self, trial: int, epoch: int, epochs: int, accuracy: float) -> None:
        self._val = (accuracy, epoch)
        p = self._progress if trial == self._trial else None
        if p is not None and epoch <= p.resumed and not p.trained_steps:
            speed = " (restored from its checkpoint)"
        else:
            speed = self._speed(p)
        head = f"trial {trial} epoch {epoch}/{epochs} val {accuracy:.4f}"
        self._event(head + speed + self._tail(), head)

    def rejected_arch(self, trial: int, params: int, limit: int) -> None:
        self.rejected += 1
        head = f"trial {trial} rejected: {params:,} params > {limit:,}"
        self._event(f"{head} | {self.rejected} rejected so far", head)

    def rejected_memory(self, trial: int, need: int, usable: int) -> None:
        """Trial ``trial`` would need ``need`` bytes where ``usable`` may be taken (cerberus.memory)."""
        self.rejected += 1
        head = f"trial {trial} rejected: needs ~{need / 2**20:,.0f} MiB of memory > {usable / 2**20:,.0f} MiB usable"
        self._event(f"{head} | {self.rejected} rejected so far", head)

    def note(self, text: str) -> None:
        """Something the user should know that is no trial's end (a checkpoint set aside)."""
        self._print(f"{self._prefix}{text}")

    def failed(self, trial: int, reason: str, error: str) -> None:
        self._stopped(trial)
        detail = f" ({error})" if error else ""
        self._print(f"{self._prefix}trial {trial} failed: {reason}{detail}")
        self._last = f"trial {trial} failed: {reason}"

    def finished(self, trial: int, state: str, accuracy: float | None, params: int, seconds: float) -> None:
        self._stopped(trial)
        self.done += 1
        self._seconds.append(seconds)
        if accuracy is not None and state == "complete" and (self.best is None or accuracy > self.best[0]):
            self.best = (accuracy, trial)
        acc = f"val {accuracy:.4f}" if accuracy is not None else "no score"
        self._print(f"{self._prefix}trial {trial} {state}: {acc}, {params:,} params, {seconds:.1f} s | {self._best()} | "
                    f"{self.done}/{self.target} trained, {self.rejected} rejected")
        self._last = f"trial {trial} {state}"
        self._view.counted(self.done)

    # What is shown.

    def training_now(self) -> bool:
        return self._progress is not None

    def line(self) -> str:
        """The status line: the running trial where it is (epoch, step, speed, time left), or
        the latest event between trials; then the run's time left, the study's best, rejections."""
        trial, p, val = self._trial, self._progress, self._val  # read once: the main thread may clear them meanwhile
        if p is None or trial is None:
            head = self._last
        elif not p.epochs:
            head = f"trial {trial} setting up"
        else:
            head = f"trial {trial} epoch {p.epoch}/{p.epochs} step {p.step}/{p.steps_per_epoch}"
            if val is not None:
                head += f" (val {val[0]:.4f} after epoch {val[1]})"
            if p.epoch_started is None and p.trained_steps:  # between epochs: evaluation, checkpoint, pruner
                head += " validating"
            head += self._speed(p)
        return head + self._tail()

    def _speed(self, p: Tally | None) -> str:
        if p is None:
            return ""
        now = time.perf_counter()
        rate, left = p.images_per_s(now), p.seconds_left(now)
        if rate is None or left is None:
            return ""
        return f" | {rate:,.0f} img/s, trial ~{duration(left)} left"

    def _tail(self) -> str:
        return f"{self._run_left()} | {self._best()} | {self.rejected} rejected"

    def _run_left(self) -> str:
        """Trials to go x the mean time of the trials this run trained (the running one by its
        own estimate); nothing until one has finished here."""
        if not self._seconds:
            return ""
        mean, to_go = statistics.fmean(self._seconds), max(self.target - self.done, 0)
        p = self._progress
        running = p.seconds_left() if p is not None else None
        if running is None or not to_go:  # between trials (or a running one not yet timed)
            return f" | run ~{duration(to_go * mean)} left ({_trials(to_go)} at ~{duration(mean)} each)"
        if to_go == 1:
            return f" | run ~{duration(running)} left (the run's last trial)"
        return (f" | run ~{duration(running + (to_go - 1) * mean)} left (this trial, then {_trials(to_go - 1)} "
                f"at ~{duration(mean)} each)")

    def _best(self) -> str:
        return f"best {self.best[0]:.4f} (trial {self.best[1]})" if self.best else "best -"

    def _event(self, text: str, head: str) -> None:
        """``text`` is the plain line; ``head`` what the live line keeps of it until the next event."""
        self._last = head
        self._view.event(text)

    def _print(self, line: str) -> None:
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def _stopped(self, trial: int) -> None:
        if trial == self._trial:
            self._trial, self._progress, self._val = None, None, None
