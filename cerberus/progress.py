"""What ``run`` shows while it works: a live line on a terminal, plain lines anywhere else."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """Told of every event of a run; prints finished trials and keeps a live status line.

    ``target`` is the number of trained trials the study should hold, ``done`` how many it
    holds already. Off a terminal (CI, a log file, a pipe), or with a ``prefix`` (one of
    several workers sharing a terminal), every event is one plain line, prefix first.
    """

    def __init__(self, target: int, done: int, console: Console | None = None, prefix: str = "") -> None:
        self.console = console or Console(stderr=True)
        self._prefix = prefix
        self.target, self.done = target, done
        self.rejected = 0
        self.best: tuple[float, int] | None = None
        self._live: Progress | None = None
        if self.console.is_terminal and not prefix:
            self._live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self.console, transient=True)
            self._task = self._live.add_task("starting", total=target, completed=done)

    def __enter__(self) -> Reporter:
        if self._live:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._live.stop()

    def _best(self) -> str:
        return f"best {self.best[0]:.4f} (trial {self.best[1]})" if self.best else "best -"

    def _status(self, text: str) -> None:
        if self._live:
            self._live.update(self._task, description=text, completed=self.done)
        else:
            self.console.print(self._prefix + text, highlight=False, markup=False, soft_wrap=True)

    def epoch(self, trial: int, epoch: int, epochs: int, accuracy: float) -> None:
        self._status(f"trial {trial} epoch {epoch}/{epochs} val {accuracy:.4f} | {self._best()} | {self.rejected} rejected")

    def rejected_arch(self, trial: int, params: int, limit: int) -> None:
        self.rejected += 1
        self._status(f"trial {trial} rejected: {params:,} params > {limit:,} | {self.rejected} rejected so far")

    def failed(self, trial: int, reason: str, error: str) -> None:
        detail = f" ({error})" if error else ""
        self.console.print(f"{self._prefix}trial {trial} failed: {reason}{detail}", highlight=False, markup=False, soft_wrap=True)

    def finished(self, trial: int, state: str, accuracy: float | None, params: int, seconds: float) -> None:
        self.done += 1
        if accuracy is not None and state == "complete" and (self.best is None or accuracy > self.best[0]):
            self.best = (accuracy, trial)
        acc = f"val {accuracy:.4f}" if accuracy is not None else "no score"
        line = f"{self._prefix}trial {trial} {state}: {acc}, {params:,} params, {seconds:.1f} s | {self._best()} | {self.done}/{self.target} trained, {self.rejected} rejected"
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)
        if self._live:
            self._live.update(self._task, completed=self.done)
