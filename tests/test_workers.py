"""cerberus.workers: several worker processes on one study."""

import dataclasses
import json
import subprocess
import sys

import optuna
import pytest
import torch
from conftest import ROOT, cli
from optuna.trial import TrialState

from cerberus import search as searches
from cerberus import workers as pool

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu")


def stress(url: str, workers: int = 8, trials: int = 60) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "storage_stress.py"), "--storage", url,
                        "--workers", str(workers), "--trials", str(trials)],
                       capture_output=True, text=True, timeout=400, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_clean(result: dict) -> None:
    assert result["errors"] == 0, result["first_errors"]
    assert result["complete"] >= result["target"]  # workers finish the trial in hand: a few more
    assert result["unfinished"] == 0 and result["duplicate_numbers"] == 0


def distinct_numbers(url: str) -> list:
    trials = optuna.load_study(study_name="cerberus", storage=url).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    return trials



def test_worker_options_round_trip_through_json():
    opts = searches.RunOptions(trials=7, max_params=123, epochs=2, device=torch.device("cpu"), data="synthetic",
                               data_dir="/d", seed=4, timeout=9.5, max_failures=2, artifacts=ROOT / "x", compile=True,
                               objectives=("accuracy", "params"), grace=30, precision="fp32", pulse=10)
    assert searches.RunOptions.from_json(opts.to_json()) == opts
    assert {f for f in json.loads(opts.to_json())} == {f.name for f in __import__("dataclasses").fields(opts)}


def test_each_gpu_worker_sees_only_its_gpu_and_the_workers_share_the_cores():
    job = pool.Job("s", "sqlite:///s.db", 10, searches.RunOptions(trials=5, compile=True), 0)
    jobs = [pool.for_device(dataclasses.replace(job, index=i), f"cuda:{g}") for i, g in enumerate((0, 0, 1, 1))]
    envs = [pool.environment(j, jobs, {"PATH": "/bin"}, cores=16) for j in jobs]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "0", "1", "1"]
    assert all(e["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and e["TORCHINDUCTOR_COMPILE_THREADS"] == "4" for e in envs)
    assert all(j.options.device == "cuda:0" for j in jobs) and [j.options.gpu for j in jobs] == [0, 0, 1, 1]
    given = [pool.Job.from_json(e[pool.JOB_ENV]) for e in envs]
    assert given == jobs and "OMP_NUM_THREADS" not in envs[0]
    cpu = [pool.for_device(dataclasses.replace(job, index=i, options=searches.RunOptions(trials=5)), "cpu") for i in range(4)]
    cpu_envs = [pool.environment(j, cpu, {}, cores=16) for j in cpu]
    assert all(e["OMP_NUM_THREADS"] == "4" and "CUDA_VISIBLE_DEVICES" not in e for e in cpu_envs)


@pytest.mark.slow
def test_eight_workers_on_sqlite_lose_nothing(tmp_path):
    assert_clean(stress(f"sqlite:///{tmp_path / 'stress.db'}"))


@pytest.mark.slow
def test_eight_workers_on_postgresql_lose_nothing(postgres_url):
    assert_clean(stress(postgres_url))


@pytest.mark.slow
def test_run_with_workers_fills_one_study_and_stops_at_the_target(workdir):
    """Two workers (one a core), three trials: each counts the trials the other is training, so
    neither starts a fourth (before, each went on until the study held three: four trained)."""
    r = cli("run", *SMOKE, "--trials", "3", "--workers", "2", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "[w0]" in r.stderr and "[w1]" in r.stderr
    trials = distinct_numbers(f"sqlite:///{workdir / 'studies' / 'cerberus.db'}")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    assert all(t.state != TrialState.RUNNING for t in trials)


@pytest.mark.slow
def test_workers_on_separate_machines_share_a_postgresql_study(workdir, postgres_url):
    """Two independent `run` commands, as on two hosts, on one PostgreSQL study; then `best`."""
    args = ("run", *SMOKE, "--trials", "2", "--storage", postgres_url, "--study", "shared")
    # One intra-op thread each, as if each had its own machine's cores: two processes of two
    # threads on two cores spend most of their time waiting for each other.
    env = {"PYTHONPATH": str(ROOT), "PATH": "", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "cerberus", *args], cwd=workdir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 2 and len({t.number for t in study.trials}) == len(study.trials)
    best = cli("best", "--json", "--storage", postgres_url, "--study", "shared", cwd=workdir)
    assert best.returncode == 0 and json.loads(best.stdout)[0]["trial"] in {t.number for t in complete}


@pytest.mark.slow
def test_sigterm_to_the_parent_stops_every_worker_cleanly(workdir):
    """`kill` of the command that started the workers (Slurm signals the job's main process)
    reaches each worker: every running trial ends `interrupted` and is queued again."""
    import signal
    import time

    from conftest import popen

    db = workdir / "studies" / "cerberus.db"
    proc = popen("run", *SMOKE, "--trials", "4", "--epochs", "6", "--workers", "2", "--heartbeat", "1", cwd=workdir)
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            running = [t for t in distinct_numbers(f"sqlite:///{db}") if t.state == TrialState.RUNNING and t.intermediate_values]
        except Exception:  # the study is being created
            running = []
        if len(running) == 2:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the two workers never trained at once")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    trials = distinct_numbers(f"sqlite:///{db}")
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert len(stopped) == 2 and all(t.user_attrs["reason"] == "interrupted" for t in stopped), err
    assert len([t for t in trials if t.state == TrialState.WAITING]) == 2 and "Traceback" not in err
