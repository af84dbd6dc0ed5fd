"""cerberus.reporter: the live line on a terminal and plain lines in a log."""

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import optuna
import pytest
from conftest import ROOT, tiny_splits
from rich.console import Console

from cerberus import search as searches
from cerberus import space as spaces
from cerberus import study as studies
from cerberus.reporter import BAR_COLUMNS, INTERVAL_ENV, Reporter

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu")


TMUX = shutil.which("tmux")


# One torch thread per process: two cores are shared with the other tests' processes.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


LEFT = r"~\d[\d hmins]* left"  # "~42 s left", "~3 min 05 s left" on a slow machine


RUNNING = re.compile(rf"trial (\d+) epoch (\d+)/3 step (\d+)/70\b.* \| [\d,]+ img/s, trial {LEFT}")



@pytest.mark.slow
@pytest.mark.skipif(TMUX is None, reason="tmux is not installed: the live line on a terminal is not tested")
def test_the_live_line_on_a_terminal_follows_the_running_trial(workdir):
    """A real `run` in a detached tmux window: the live line shows the running trial's epoch,
    step i/N, images/s and time left, redrawn within an epoch (no event in between), and the
    run's time left once a trial has finished."""
    # A private tmux server on a socket of its own (short path: sockets allow ~100 characters),
    # so nobody else's sessions are touched and nothing is left behind.
    sockets = tempfile.mkdtemp(prefix="cerberus-tmux-")
    socket = os.path.join(sockets, "s")
    tmux = lambda *a: subprocess.run([TMUX, "-S", socket, *a], capture_output=True, text=True, timeout=10)  # noqa: E731
    # Without COLUMNS and LINES (a pytest run may pass COLUMNS=80 down), rich asks the tmux pane its size.
    command = shlex.join(["env", "-u", "COLUMNS", "-u", "LINES", *(f"{k}={ENV[k]}" for k in ("PYTHONPATH", "OMP_NUM_THREADS")),
                          sys.executable,
                          "-m", "cerberus", "run", *SMOKE, "--trials", "2", "--epochs", "3", "--seed", "0"])
    started = tmux("new-session", "-d", "-s", "run", "-x", "220", "-y", "50", "-c", str(workdir), command + "; sleep 600")
    assert started.returncode == 0, started.stderr
    seen: dict[tuple[int, int], set[int]] = {}  # (trial, epoch) -> steps shown
    run_left = None
    try:
        deadline = time.time() + 150
        while time.time() < deadline and run_left is None:
            screen = tmux("capture-pane", "-p", "-t", "run").stdout
            assert "Traceback" not in screen, screen
            for line in screen.splitlines():
                if m := RUNNING.search(line):
                    seen.setdefault((int(m[1]), int(m[2])), set()).add(int(m[3]))
                    if "run ~" in line and "(the run's last trial)" in line:
                        run_left = line
            if "the study holds" in screen:  # the run is over
                break
            time.sleep(0.15)
    finally:
        tmux("kill-server")
        shutil.rmtree(sockets, ignore_errors=True)
    assert seen, f"no live line of a running trial; last screen:\n{screen}"
    assert any(len(steps) >= 2 for steps in seen.values()), seen  # redrawn between two events
    assert run_left is not None, f"no run time left after the first trial; last screen:\n{screen}"
    assert re.search(r"best \d\.\d{4} \(trial 0\)", run_left), run_left  # seeded: trial 0 completes


@pytest.mark.slow
def test_a_log_gets_a_line_per_epoch_and_one_per_interval_within_a_trial(workdir):
    env = {**ENV, INTERVAL_ENV: "0.3"}
    r = subprocess.run([sys.executable, "-m", "cerberus", "run", *SMOKE, "--trials", "1", "--epochs", "2"],
                       cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    ends = [line for line in lines if re.match(rf"trial 0 epoch \d/2 val \d\.\d{{4}} \| [\d,]+ img/s, trial {LEFT}", line)]
    assert [line.split()[3] for line in ends] == ["1/2", "2/2"], r.stderr
    within = [line for line in lines if re.match(rf"trial 0 epoch [12]/2 step \d+/70 .*\| [\d,]+ img/s, trial {LEFT}", line)]
    assert within, r.stderr
    assert "trial 0 complete:" in r.stderr and "\x1b" not in r.stderr and "\r" not in r.stderr  # plain text


@pytest.mark.parametrize("width", [80, 220])
def test_the_live_line_is_one_row_at_any_width(width):
    """At 80 columns the live line used to wrap around the bar onto four rows; it is one row, cut
    with an ellipsis, the bar dropped below BAR_COLUMNS so the text keeps its room."""
    terminal = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    reporter = Reporter(10, 3, console=terminal)
    reporter.rejected_arch(7, 6_000_000, 5_000_000)
    reporter.study_best((0.8123, 2))
    frame = io.StringIO()
    Console(file=frame, width=width, color_system=None).print(reporter._view._bar.get_renderable())
    (row,) = frame.getvalue().splitlines()
    assert len(row) <= width and row.startswith("trial 7 rejected: 6,000,000 params") and row.rstrip().endswith("3/10 0:00:00")
    assert ("━" in row) == (width >= BAR_COLUMNS) and (row.count("…") == 1) == (width < 120)


def test_best_is_the_studys_from_the_start_and_counts_other_workers_trials(tmp_path):
    """A study that already holds a better trial shows it as best from the first line, and a
    trial another worker finishes meanwhile counts after this worker's next trial."""
    path = tmp_path / "space.toml"
    path.write_text("[arch]\nstages = 1\nblocks = 1\nwidths = [4, 8]\n[recipe]\nepochs = 1\nbatch_size = 128\nlr = 0.05\n")
    study = studies.create_study("t", optuna.storages.InMemoryStorage(), seed=0)
    elsewhere = lambda value: optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=value,  # noqa: E731
                                                        user_attrs={"params": 100})
    study.add_trial(elsewhere(0.99))  # trial 0: better than anything trained here
    added = []

    def other_worker(study, trial):
        if not added:
            added.append(study.add_trial(elsewhere(0.995)))  # trial 2, while trial 1 ends

    out = io.StringIO()
    with Reporter(4, 1, console=Console(file=out, width=300)) as reporter:
        searches.run(study, spaces.load(path), searches.RunOptions(trials=4, max_params=10_000), reporter,
                    splits=tiny_splits, callbacks=[other_worker])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("trial 1 epoch 1/1 val ") and "best 0.9900 (trial 0)" in lines[0], lines
    finished = [line for line in lines if " complete: " in line]
    assert finished[0].startswith("trial 1 ") and "best 0.9900 (trial 0)" in finished[0], lines
    assert finished[1].startswith("trial 3 ") and "best 0.9950 (trial 2)" in finished[1], lines
