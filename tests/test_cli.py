"""The real command line, in subprocesses, against real SQLite files."""

import json
import shutil
import signal
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from cerberus.config import Config
from conftest import cli, popen, refusal, run_cli

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu")


def trained(db, study="cerberus"):
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.user_attrs.get("reason") != "over_budget"]


def test_smoke_run_then_best_json_on_a_fresh_sqlite_file(workdir, monkeypatch, capsys):
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


def test_trials_is_a_target_for_the_study_so_a_rerun_finishes_the_rest(workdir, monkeypatch, capsys):
    assert cli("run", *SMOKE, "--trials", "2", "--epochs", "1", "--seed", "1", cwd=workdir).returncode == 0
    monkeypatch.chdir(workdir)  # the reruns in this process: the same app, without seconds of imports
    assert run_cli("run", *SMOKE, "--trials", "3", "--seed", "2") == 0
    err = capsys.readouterr().err
    assert "2 of 3 trained trials" in err and "trained 1 trial(s) this run" in err
    assert run_cli("run", *SMOKE, "--trials", "3") == 0
    assert "trained 0 trial(s) this run" in capsys.readouterr().err
    assert len(trained(workdir / "studies" / "cerberus.db")) == 3


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


def test_ctrl_c_then_the_same_command_finishes_the_rest(workdir):
    """(SIGKILL at random moments: test_resilience.py.)"""
    db = workdir / "studies" / "cerberus.db"
    args = ("run", *SMOKE, "--trials", "4", "--seed", "1")  # seeded: small nets, about 10 s for all 4 (unseeded, up to 40)
    proc = popen(*args, cwd=workdir)
    wait_for_trained(db, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    done = len(trained(db))
    assert 2 <= done < 4, (proc.returncode, err)
    assert proc.returncode == 130
    assert "interrupted" in err and "run the same command" in err and "Traceback" not in err
    r = cli(*args, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert f"{done} of 4 trained trials" in r.stderr
    assert len(trained(db)) == 4  # the remainder, no more


def test_count_prints_the_seed_architecture(capsys):
    assert run_cli("count", "--blocks", "3,5,3", "--channels", "64,128,256", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 4_918_602 and out["fits"] is True and out["flops"] > 0
    assert run_cli("count", "--blocks", "3,5,3", "--channels", "64,128,256", "--skip-kernel", "3", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 5_246_282 and out["fits"] is False


@pytest.mark.skipif(shutil.which("cerberus-search") is None, reason="package not installed (pip install -e .)")
def test_console_script_is_the_same_app(workdir):
    r = __import__("subprocess").run(["cerberus-search", "count", "--blocks", "3,5,3", "--channels", "64,128,256", "--json"],
                                     cwd=workdir, capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["params"] == 4_918_602


def test_seeded_cpu_runs_are_reproducible(workdir, monkeypatch):
    """The same seeded command in a fresh process and in this one (whatever it ran before)."""
    results = []
    monkeypatch.chdir(workdir)
    for name in ("a", "b"):
        args = ("run", *SMOKE, "--trials", "2", "--seed", "7", "--storage", f"sqlite:///{name}.db")
        if name == "a":
            r = cli(*args, cwd=workdir)
            assert r.returncode == 0, r.stderr
        else:
            assert run_cli(*args) == 0
        study = optuna.load_study(study_name="cerberus", storage=f"sqlite:///{workdir / name}.db")
        results.append([(t.params, t.value) for t in study.trials])
    assert results[0] == results[1]


def assert_refused(r, message, workdir):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (workdir / "studies").exists()  # nothing created


@pytest.fixture
def refused(workdir, monkeypatch, capsys):
    """``refused(args, message)``: the command, in this process (the same app, without seconds
    of imports; a real process is checked above), exits 2 with one line and creates nothing."""
    monkeypatch.chdir(workdir)

    def check(args, message):
        assert message in refusal(capsys, *args)
        assert not (workdir / "studies").exists()

    return check


def test_a_budget_no_architecture_meets_ends_at_once(workdir):
    start = time.time()
    r = cli("run", *SMOKE, "--max-params", "1000", cwd=workdir)
    assert_refused(r, "no architecture in search/smoke.toml fits --max-params 1,000: the smallest has 1,506 parameters", workdir)
    assert time.time() - start < 60


@pytest.mark.parametrize("args, message", [
    (("run", "--space", "search/nope.toml"), "--space 'search/nope.toml': no such file, and not a shipped name; shipped: cpu, default, seed, smoke"),
    (("run", "--trials", "0"), "--trials must be positive, got 0"),
    (("run", "--trials", "many"), "Invalid value for '--trials'"),
    (("run", "--data", "imagenet"), "--data 'imagenet' is not a dataset; allowed: cifar10, synthetic"),
    (("run", "--device", "tpu"), "--device 'tpu' is not a device; allowed: auto, cpu, cuda, cuda:N"),
    (("run", "--storage", "nonsense"), "--storage 'nonsense' is not a database URL"),
    (("run", "--device", "cpu", "--cuda-graph"), "--cuda-graph records the step on a CUDA device, and this run trains on cpu"),
    (("train", "--config", "seed", "--device", "cpu", "--cuda-graph"), "--cuda-graph records the step on a CUDA device"),
    (("best", "--study", "nope"), "no study storage at studies/cerberus.db"),
    (("count", "--blocks", "3,,3", "--channels", "64,128,256"), "--blocks '3,,3' must be comma-separated positive integers"),
    (("count", "--blocks", "3,5", "--channels", "64,128,256"), "--blocks has 2 stages but --channels has 3"),
])
def test_bad_input_is_one_line_and_exit_2(refused, args, message):
    refused(args, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(refused):
    refused(("run", *SMOKE[:4], "--device", "cuda"), "CUDA is not available on this machine")


def test_bad_space_file_via_cli(workdir, refused):
    (workdir / "bad.toml").write_text('[arch]\nstages = 1\nblocks = 1\nwidths = 8\n[recipe]\noptimizer = "rmsprop"\n')
    refused(("run", "--space", "bad.toml", "--data", "synthetic"),
            "bad.toml: [recipe] optimizer: 'rmsprop' is not allowed; allowed: sgd, nesterov")


def test_best_on_an_unknown_study_changes_nothing(default_search, tmp_path, monkeypatch, capsys):
    workdir = shutil.copytree(default_search, tmp_path / "w")
    db = workdir / "studies" / "cerberus.db"
    before = db.read_bytes()
    monkeypatch.chdir(workdir)
    err = refusal(capsys, "best", "--study", "other")
    assert "no study named 'other'" in err and "studies there: cerberus" in err
    assert db.read_bytes() == before
