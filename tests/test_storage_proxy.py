"""cerberus.storage's gRPC proxy: many workers, one database connection pool."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import ROOT, cli, popen, refusal
from optuna.trial import TrialState
from proxies import start_proxy

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu")


def through_proxy(url: str, workers: int = 8, trials: int = 2) -> dict:
    """8 worker processes, 16 trained trials in all (the 2-core machine serves ~3 a second
    through the proxy; benchmarks/RESULTS.md has 200 and the direct figures)."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "proxy_throughput.py"), "--storage", url, "--proxy",
                        "--workers", str(workers), "--trials", str(trials)],
                       capture_output=True, text=True, timeout=400, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_clean(result: dict) -> None:
    assert result["errors"] == 0 and result["exit_codes"] == [0] * result["workers"], result["first_errors"]
    assert result["failed"] == 0 and result["unfinished"] == 0 and result["duplicate_numbers"] == 0
    assert result["trained"] == result["trials"] >= result["target"]  # every trial trained, recorded once


@pytest.fixture
def proxy(workdir):
    proc, url = start_proxy(f"sqlite:///{workdir / 'studies' / 'cerberus.db'}")
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM  # a clean stop, as from Ctrl-C: no traceback
    assert "Traceback" not in proc.stderr.read()



@pytest.mark.slow
def test_eight_cerberus_workers_through_the_proxy_on_sqlite_lose_nothing(tmp_path):
    assert_clean(through_proxy(f"sqlite:///{tmp_path / 'p.db'}"))


@pytest.mark.slow
def test_eight_cerberus_workers_through_the_proxy_on_postgresql_lose_nothing(postgres_url):
    assert_clean(through_proxy(postgres_url))


@pytest.mark.slow
def test_a_worker_killed_through_the_proxy_is_retried_and_resumes(workdir, proxy):
    """The proxy keeps no heartbeats; cerberus's own (user attr `alive`) let the next run fail
    the dead trial and resume its retry from the checkpoint."""
    args = ("run", *SMOKE, "--storage", proxy, "--trials", "1", "--epochs", "4", "--heartbeat", "1", "--checkpoint-every", "0")
    proc = popen(*args, cwd=workdir)
    db = f"sqlite:///{workdir / 'studies' / 'cerberus.db'}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name="cerberus", storage=db).get_trials(deepcopy=False)
        except KeyError:
            trials = []
        if trials and len(trials[0].intermediate_values) >= 3:  # epoch 2's checkpoint is written
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    time.sleep(3.5)  # over three heartbeats: the trial is stale
    r = cli(*args, cwd=workdir)
    assert r.returncode == 0, r.stderr
    first, retry = optuna.load_study(study_name="cerberus", storage=db).get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL and "reason" not in first.user_attrs  # worker_died
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["origin"] == 0
    assert retry.user_attrs["resumed_epochs"] >= 2 and retry.system_attrs["retry_history"] == [0]


@pytest.mark.slow
def test_workers_through_the_proxy_join_by_name_as_the_slurm_example_runs_them(workdir, proxy):
    """The Slurm example's worker command, run on this machine with the variables Slurm sets (the
    #SBATCH lines are comments to bash): it names only the storage and the study, joins the
    study the first run defined, and `best` reads the result through the proxy."""
    assert cli("run", *SMOKE, "--storage", proxy, "--trials", "1", cwd=workdir).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "42",
           "CERBERUS_STORAGE": proxy, "CERBERUS_STUDY": "cerberus", "CERBERUS_TRIALS": "2", "CERBERUS_DEVICE": "cpu",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(ROOT / "examples" / "slurm.sbatch")], cwd=workdir, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0 and "space search/smoke.toml" in r.stderr, r.stderr
    trials = optuna.load_study(study_name="cerberus", storage=f"sqlite:///{workdir / 'studies' / 'cerberus.db'}").trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    rows = json.loads(cli("best", "--storage", proxy, "--json", cwd=workdir).stdout)
    assert len(rows) == 1


def test_what_the_proxy_cannot_do_is_refused_in_one_line(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert "give the database the proxy serves" in refusal(capsys, "proxy", "--storage", "grpc://127.0.0.1:13000")
    assert "no storage proxy answers" in refusal(capsys, "run", *SMOKE, "--storage", "grpc://127.0.0.1:9", "--trials", "1")
    assert "optuna-dashboard reads the database itself" in refusal(capsys, "dashboard", "--storage", "grpc://127.0.0.1:9")
    assert "not a proxy address" in refusal(capsys, "best", "--storage", "grpc://nowhere")
    assert "run `cerberus-search run` instead" in refusal(capsys, "worker")  # the hidden command, without its job
    assert not (workdir / "studies").exists()


@pytest.mark.slow
def test_a_proxy_killed_and_started_again_on_its_port_is_reconnected_to(workdir):
    """Workers used to end with three tracebacks (an UnboundLocalError inside Optuna's client), and
    a proxy started again at once on the same port was refused: now the same port is taken again
    at once, and the worker's calls wait for it and go on."""
    storage = f"sqlite:///{workdir / 'studies' / 'cerberus.db'}"
    proxy, url = start_proxy(storage)
    port = int(url.rsplit(":", 1)[1])
    args = ("run", *SMOKE, "--storage", url, "--trials", "2", "--epochs", "2", "--seed", "0")
    proc = popen(*args, cwd=workdir)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the first trial has reported an epoch
        try:
            trials = optuna.load_study(study_name="cerberus", storage=storage).get_trials(deepcopy=False)
        except KeyError:
            trials = []
        if trials and trials[0].intermediate_values:
            break
        time.sleep(0.1)
    proxy.kill()
    proxy.wait()
    time.sleep(1.0)
    proxy, _ = start_proxy(storage, port)  # at once, on the same port
    try:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        done = optuna.load_study(study_name="cerberus", storage=storage).get_trials(deepcopy=False)
        assert sum(t.state == TrialState.COMPLETE for t in done) >= 2
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(30)
