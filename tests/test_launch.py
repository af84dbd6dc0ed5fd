"""cerberus.launch and the `run` command: setting a search up, stopping it, running it again."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import ROOT, cli, popen, refusal, run_cli
from optuna.trial import TrialState

from cerberus import launch, shipped, size
from cerberus import space as spaces
from cerberus.config import COURSE, COURSE_CPU, Config

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu")


def trained(db, study="cerberus"):
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.user_attrs.get("reason") != "over_budget"]


def wait_for_trained(db, n, proc, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.exists():
            try:
                if len(trained(db)) >= n:
                    return
            except Exception:  # the study is being created
                pass
        time.sleep(0.3)
    pytest.fail(f"no {n} trained trials within {limit}s")


def assert_refused(r, message, workdir):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (workdir / "studies").exists()  # nothing created


def load(workdir, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / 'cerberus.db'}")


@pytest.mark.slow
def test_smoke_run_then_best_json_on_a_fresh_sqlite_file_then_reruns_finish_the_rest(workdir, monkeypatch, capsys):
    r = cli("run", *SMOKE, "--trials", "3", cwd=workdir)
    assert r.returncode == 0, r.stderr
    db = workdir / "studies" / "cerberus.db"  # the default storage
    assert db.exists()
    assert len(trained(db)) == 3
    assert "the study holds 3 of 3 trained trials" in r.stderr
    assert "trial 2 complete" in r.stderr and "Traceback" not in r.stderr

    monkeypatch.chdir(workdir)  # `best` in this process: the same app, without seconds of imports
    assert run_cli("best", "--json", "--top", "10") == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3
    assert [r["val_accuracy"] for r in rows] == sorted((r["val_accuracy"] for r in rows), reverse=True)
    for row in rows:
        assert 0 <= row["val_accuracy"] <= 1 and isinstance(row["params"], int)
        config = Config.from_dict(row["config"])  # the same object run sampled
        assert config.recipe.epochs == 1 and len(config.arch.blocks) in (1, 2)
    assert run_cli("best", "--top", "3") == 0
    assert f"{rows[0]['params']:,}" in capsys.readouterr().out

    # --trials is a target for the study, so a rerun finishes the rest and no more
    assert run_cli("run", *SMOKE, "--trials", "3") == 0
    assert "trained 0 trial(s) this run" in capsys.readouterr().err
    assert run_cli("run", *SMOKE, "--trials", "4", "--seed", "2") == 0
    err = capsys.readouterr().err
    assert "3 of 4 trained trials" in err and "trained 1 trial(s) this run" in err
    assert len(trained(db)) == 4


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_finishes_the_rest(workdir):
    """(SIGKILL at random moments: test_resilience.py.)"""
    db = workdir / "studies" / "cerberus.db"
    args = ("run", *SMOKE, "--trials", "3", "--seed", "1")  # seeded: small nets, a few seconds each
    proc = popen(*args, cwd=workdir)
    wait_for_trained(db, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    done = len(trained(db))
    assert 1 <= done < 3, (proc.returncode, err)
    assert proc.returncode == 130
    assert "interrupted" in err and "run the same command" in err and "Traceback" not in err
    r = cli(*args, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert f"{done} of 3 trained trials" in r.stderr
    assert len(trained(db)) == 3  # the remainder, no more


@pytest.mark.slow
def test_seeded_cpu_runs_are_reproducible(workdir, monkeypatch):
    """The same seeded command in a fresh process and in this one (whatever it ran before)."""
    results = []
    monkeypatch.chdir(workdir)
    for name in ("a", "b"):
        args = ("run", *SMOKE, "--trials", "1", "--seed", "7", "--storage", f"sqlite:///{name}.db")
        if name == "a":
            r = cli(*args, cwd=workdir)
            assert r.returncode == 0, r.stderr
        else:
            assert run_cli(*args) == 0
        study = optuna.load_study(study_name="cerberus", storage=f"sqlite:///{workdir / name}.db")
        results.append([(t.params, t.value) for t in study.trials])
    assert results[0] == results[1]


@pytest.mark.slow
def test_a_budget_no_architecture_meets_ends_at_once(workdir):
    start = time.time()
    r = cli("run", *SMOKE, "--max-params", "1000", cwd=workdir)
    assert_refused(r, "no architecture in search/smoke.toml fits --max-params 1,000: the smallest has 1,506 parameters", workdir)
    assert time.time() - start < 60


def test_bad_space_file_via_cli(workdir, refused):
    (workdir / "bad.toml").write_text('[arch]\nstages = 1\nblocks = 1\nwidths = 8\n[recipe]\noptimizer = "rmsprop"\n')
    refused(("run", "--space", "bad.toml", "--data", "synthetic"),
            "bad.toml: [recipe] optimizer: 'rmsprop' is not allowed; allowed: sgd, nesterov")


@pytest.mark.slow
def test_a_best_row_enqueued_from_a_file_is_trained_first_and_only_once(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)  # in this process but for the first `b` run: the same app, fewer imports
    assert run_cli("run", *SMOKE, "--trials", "1", "--seed", "3", "--study", "a") == 0
    capsys.readouterr()
    assert run_cli("best", "--study", "a", "--json") == 0
    row = json.loads(capsys.readouterr().out)[0]
    (workdir / "known.json").write_text(json.dumps(row))
    r = cli("run", *SMOKE, "--trials", "2", "--study", "b", "--enqueue", "known.json", cwd=workdir)
    assert r.returncode == 0 and "queued 1 known configuration(s)" in r.stderr, r.stderr
    assert run_cli("run", *SMOKE, "--trials", "3", "--study", "b", "--enqueue", "known.json") == 0
    assert "queued" not in capsys.readouterr().err  # the second run does not queue it again
    trials = load(workdir, "b").trials
    assert [t.user_attrs.get("enqueued") for t in trials] == ["known.json", None, None]
    assert Config.from_dict(trials[0].user_attrs["config"]) == Config.from_dict(row["config"])


def test_bad_enqueue_input_is_one_line_exit_2_and_changes_nothing(workdir, monkeypatch, capsys):
    (workdir / "broken.json").write_text("{not json")
    (workdir / "wrong.json").write_text(json.dumps({"arch": {"blocks": [1]}, "recipe": {}, "colour": 1}))
    for args, words in ((["--enqueue-seed"], "--enqueue-seed: search/smoke.toml cannot express this configuration: stages = 3, the space allows 1, 2"),
                        (["--enqueue", "missing.json"], "--enqueue missing.json does not exist"),
                        (["--enqueue", "broken.json"], "--enqueue broken.json is not JSON"),
                        (["--enqueue", "wrong.json"], "unknown key 'colour'")):
        monkeypatch.chdir(workdir)
        assert words in refusal(capsys, "run", *SMOKE, "--trials", "1", *args)
    assert not (workdir / "studies" / "cerberus.db").exists()  # refused before any storage


@pytest.mark.slow
def test_hints_quote_a_name_so_it_can_be_pasted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli("run", "--space", "smoke", "--data", "synthetic", "--device", "cpu", "--trials", "1",
                   "--study", "my study") == 0
    assert "cerberus-search best --study 'my study' --storage sqlite:///studies/cerberus.db" in capsys.readouterr().err
    assert "studies there: 'my study'" in refusal(capsys, "best", "--study", "other")


def test_the_cpu_space_holds_the_fast_configuration_first_and_the_default_space_the_course_row():
    space = spaces.load(shipped.resolve("cpu", shipped.SPACE, "--space"))
    fast = Config.from_json(shipped.resolve("fast", shipped.CONFIG, "--config").read_text())
    assert space.params_for(fast)  # its length and test-time views aside: those stay the space's
    assert shipped.resolve("seed-cpu", shipped.CONFIG, "--config").read_text().strip() == COURSE_CPU.to_json(indent=2)
    assert size.params(COURSE_CPU.arch) == 309_594 and COURSE_CPU.recipe == spaces.set_length(COURSE, 3).recipe
    draws = spaces.sample_archs(space, 300, seed=0)
    assert spaces.rejected_fraction(draws, 5_000_000) < 0.05  # nearly every draw trains
    assert space.recipe["budget"].values() == [0.06]
    assert launch.known_configs(space, ROOT / "search" / "cpu.toml", None, []) == [(fast, "fast.json")]
    assert launch.known_configs(spaces.load(ROOT / "search" / "default.toml"), ROOT / "search" / "default.toml", None, []) \
        == [(COURSE, "seed")]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("--workers", "0"), "--workers must be positive, got 0"),
    (("--max-failures", "0"), "--max-failures must be positive, got 0"),
    (("--heartbeat", "-1"), "--heartbeat must be positive, got -1"),
    (("--gpus", "0,x"), "--gpus '0,x' must be comma-separated integers >= 0"),
    (("--storage", "postgresql://nobody@127.0.0.1:9/none"), "cannot open storage postgresql://nobody@127.0.0.1:9/none"),
    (("--storage", "sqlite:///search/smoke.toml/x.db"), "cannot create the folder search/smoke.toml"),
    # another study: this one stores --data synthetic, and a run naming cifar10 is refused for that first
    (("--data", "cifar10", "--data-dir", "broken", "--study", "fresh"), "data_batch_1 is not a CIFAR-10 batch"),
])
def test_more_bad_input_changes_nothing(default_search, tmp_path, monkeypatch, capsys, args, message):
    # In-process (the same typer app and error path as a subprocess, without seconds of imports
    # per case); an exception other than the exit would fail the test as a traceback would.
    workdir = tmp_path / "checkout"
    shutil.copytree(default_search, workdir)
    db = workdir / "studies" / "cerberus.db"
    before = db.read_bytes()
    (workdir / "broken" / "cifar-10-batches-py").mkdir(parents=True)
    (workdir / "broken" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"junk")
    monkeypatch.chdir(workdir)
    assert message in refusal(capsys, "run", *SMOKE, "--trials", "2", *args)
    assert db.read_bytes() == before


@pytest.mark.parametrize("args, words", [
    (("--timeout", "nan"), "--timeout must be positive, got nan"),
    (("--checkpoint-every", "nan"), "--checkpoint-every must be 0 (every epoch) or more seconds, got nan"),
    (("--seed", "-1"), "--seed -1 is out of range; allowed: 0..4294967295"),
    (("--seed", str(2**32)), f"--seed {2**32} is out of range"),
    (("--heartbeat", "100000000000"), "--heartbeat 100000000000 is longer than 3600 s"),
    (("--workers", "64"), "--workers 64 on a CPU of"),
    (("--budget", "-1"), "--budget must be positive, got -1"),
], ids=["timeout-nan", "checkpoint-nan", "seed-negative", "seed-too-big", "heartbeat-huge", "workers-64", "budget"])
def test_numbers_out_of_range_are_refused_before_a_study_is_made(tmp_path, capsys, args, words):
    err = refusal(capsys, "run", "--space", "smoke", "--data", "synthetic", "--device", "cpu", *args,
                  "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert words in err and not (tmp_path / "s.db").exists()


def test_a_bad_progress_interval_is_refused_as_the_memory_limit_is(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CERBERUS_PROGRESS_SECONDS", "abc")
    err = refusal(capsys, "run", "--space", "smoke", "--data", "synthetic", "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert "CERBERUS_PROGRESS_SECONDS='abc' is not a number of seconds" in err and not (tmp_path / "s.db").exists()
    monkeypatch.setenv("CERBERUS_PROGRESS_SECONDS", "nan")
    assert "CERBERUS_PROGRESS_SECONDS='nan'" in refusal(capsys, "train", "--config", "seed", "--data", "synthetic",
                                                        "--out", str(tmp_path / "out"))


def test_workers_that_cannot_all_fit_in_memory_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CERBERUS_MEMORY_LIMIT", "1500M")  # enough for one worker, not two
    err = refusal(capsys, "run", "--space", "smoke", "--data", "synthetic", "--device", "cpu", "--workers", "2",
                  "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert "--workers 2 on cpu: each worker needs at least" in err and "give --workers 1 or fewer" in err


@pytest.mark.slow
def test_sigkill_then_the_same_command_at_once_trains_the_rest_and_leaves_nothing_running(workdir):
    """The regression: a run killed with SIGKILL, then the same command at once, said it held 5 of
    6 trained trials and left the dead trial RUNNING (its heartbeat still fresh, it counted as
    trained by another worker). A dead worker of this machine is found by its pid and its trial
    resumed at once."""
    db = workdir / "studies" / "cerberus.db"
    args = ("run", *SMOKE, "--trials", "2", "--epochs", "2", "--seed", "1", "--heartbeat", "60")
    proc = popen(*args, cwd=workdir)
    deadline, training = time.time() + 300, False
    while time.time() < deadline and not training:  # one trained, the next one training (past its memory check)
        time.sleep(0.2)
        try:
            trials = optuna.load_study(study_name="cerberus", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
        except Exception:  # not made yet
            continue
        training = len(trained(db)) >= 1 and any(t.state == TrialState.RUNNING and "memory_bytes" in t.user_attrs
                                                 for t in trials)
    proc.kill()
    assert training, proc.communicate()
    proc.communicate(timeout=30)
    r = cli(*args, cwd=workdir)
    assert r.returncode == 0, r.stderr
    trials = optuna.load_study(study_name="cerberus", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    assert len(trained(db)) == 2 and not [t for t in trials if t.state == TrialState.RUNNING], ([(t.number, t.state, t.user_attrs.get("worker")) for t in trials], r.stderr)
    assert "the study holds 2 of 2 trained trials" in r.stderr


@pytest.mark.slow
def test_workers_are_counted_against_the_cores_this_process_may_use(workdir):
    """Slurm and taskset grant a job some cores of a bigger machine: its affinity, not the machine's count."""
    r = subprocess.run([sys.executable, "-m", "cerberus", "run", *SMOKE, "--trials", "2", "--workers", "2"], cwd=workdir,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert r.returncode == 2 and "--workers 2 on a CPU of 1 core(s)" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (workdir / "studies").exists()
