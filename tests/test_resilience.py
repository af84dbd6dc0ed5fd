"""Nothing lost: real kills of real worker processes, Ctrl-C, failing trials, memory."""

import gc
import random
import resource
import shutil
import signal
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from cerberus import space as spaces
from cerberus import storage as stores
from cerberus import loop as searches
from cerberus import study as studies
from cerberus import trials as records
from cerberus.progress import Reporter
from cerberus.train import Fit
from conftest import cli, popen, refusal, tiny_splits

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu", "--heartbeat", "1")
GRACE = 3.5  # a little over 3 heartbeats: then a dead worker's trial is stale


def load(db):
    return optuna.load_study(study_name="cerberus", storage=f"sqlite:///{db}").get_trials(deepcopy=False)


def trained(trials):
    return [t for t in trials if records.is_trained(t)]


def test_sigkill_at_random_points_loses_nothing(workdir):
    """10 runs of the same command, two at a time on one study (as `--workers 2` runs them), each
    SIGKILLed at its own random moment: one at any moment from launch, start-up included, the
    other inside the trial loop (sampling, training, checkpointing, writing); then the same
    command once more completes the study."""
    db = workdir / "studies" / "cerberus.db"
    args = ("run", *SMOKE, "--trials", "5", "--epochs", "2", "--seed", "3")
    rng = random.Random(0)
    completed: set[int] = set()
    for _ in range(5):  # 10 kills: the suite stays under 10 minutes on 2 cores
        kill_two_at_random(db, args, workdir, rng)
        if db.exists():
            now = {t.number for t in load(db) if t.state == TrialState.COMPLETE}
            assert completed <= now  # no completed trial is ever lost
            completed = now
    time.sleep(GRACE)  # the last victim's heartbeat goes stale
    r = cli(*args, cwd=workdir)
    assert r.returncode == 0, r.stderr
    trials = load(db)
    assert completed <= {t.number for t in trials if t.state == TrialState.COMPLETE}
    assert len(trained(trials)) >= 5
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    died = [t for t in trials if t.state == TrialState.FAIL]
    assert died, "10 kills and not one during a trial: the test did not test"
    for t in died:
        assert records.end_reason(t) == "worker_died"
        # Optuna's retry callback records the chain of earlier attempts in each retry.
        retried = [u for u in trials if t.number in u.system_attrs.get("retry_history", [])]
        last_allowed = len(t.system_attrs.get("retry_history", [])) >= stores.MAX_RETRY
        assert retried or last_allowed, f"trial {t.number} died and was never retried"
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    waiting = {t.user_attrs["origin"] for t in trials if t.state == TrialState.WAITING}  # queued retries
    left = {int(p.stem.split("-")[1]) for p in (workdir / "studies" / "cerberus" / "checkpoints").glob("*.pt")}
    assert left <= waiting  # every checkpoint left is one a queued retry will resume


def kill_two_at_random(db, args, workdir, rng, limit=120):
    before = len(load(db)) if db.exists() else 0
    start = time.time()
    procs = [popen(*args, cwd=workdir) for _ in range(2)]
    # Start-up takes about 4 s here, a trial of two epochs about 4 s more. The second victim's
    # clock starts when a new trial exists, however slow start-up is on this machine.
    deadlines, in_trial = [start + rng.uniform(0.5, 8.0), None], rng.uniform(0.0, 5.0)
    while any(p.poll() is None for p in procs):
        now = time.time()
        if deadlines[1] is None:
            try:
                if db.exists() and len(load(db)) > before:
                    deadlines[1] = now + in_trial
            except Exception:  # the workers are creating the storage right now
                pass
        for proc, deadline in zip(procs, deadlines):
            if now >= (deadline or start + limit):
                proc.kill()
        time.sleep(0.1)
    for proc in procs:
        proc.communicate()


def wait_for_epoch(db, epoch, proc, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.exists():
            try:
                running = [t for t in load(db) if t.state == TrialState.RUNNING]
            except Exception:
                running = []
            if running and max(running[0].intermediate_values, default=0) >= epoch:
                return running[0]
        time.sleep(0.2)
    pytest.fail(f"no trial reached epoch {epoch}")


@pytest.mark.parametrize("sigs, reason", [((signal.SIGKILL,), "worker_died"), ((signal.SIGTERM, signal.SIGTERM), "interrupted")],
                         ids=["SIGKILL", "SIGTERM twice"])
def test_a_stopped_trial_resumes_from_its_last_epoch(workdir, sigs, reason):
    """SIGTERM (a second one as it exits included) ends the trial `interrupted` and queues it, so
    the same command resumes it at once; SIGKILL leaves it to the heartbeat. Ctrl-C takes the
    same path as SIGTERM (cerberus.signals); test_cli.py sends it to a run, test_final.py to a
    retraining."""
    db = workdir / "studies" / "cerberus.db"
    args = ("run", *SMOKE, "--trials", "1", "--epochs", "4", "--checkpoint-every", "0")
    proc = popen(*args, cwd=workdir)
    victim = wait_for_epoch(db, 3, proc)  # epoch 2's checkpoint is written before epoch 3 trains
    proc.send_signal(sigs[0])
    said = ""
    if len(sigs) > 1:  # the second as it exits, after saying it stopped: the last window left
        while "interrupted" not in (line := proc.stderr.readline()):
            assert line, proc.communicate()
            said += line
        said += line
        proc.send_signal(sigs[1])
    _, err = proc.communicate(timeout=60)
    err = said + err
    if sigs[0] != signal.SIGKILL:
        assert proc.returncode == 128 + sigs[0] and "resumes from its last epoch" in err and "Traceback" not in err, err
        assert [t.state for t in load(db)] == [TrialState.FAIL, TrialState.WAITING]  # queued again, no heartbeat needed
    else:
        time.sleep(GRACE)
    assert list((workdir / "studies" / "cerberus" / "checkpoints").glob("*.pt"))  # kept for the retry
    r = cli(*args, cwd=workdir)
    assert r.returncode == 0, r.stderr
    trials = load(db)
    first = trials[victim.number]
    assert first.state == TrialState.FAIL and records.end_reason(first) == reason
    (retry,) = [t for t in trials if t.number != first.number]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["origin"] == first.number
    assert retry.user_attrs["config"] == first.user_attrs["config"]
    assert retry.user_attrs["resumed_epochs"] >= 2 and retry.user_attrs.get("reason") is None
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
    for epoch, value in first.intermediate_values.items():  # the same curve, not retrained
        assert retry.intermediate_values[epoch] == value
    assert not list((workdir / "studies" / "cerberus" / "checkpoints").glob("*.pt"))  # removed at the end


# In-process runs with a tiny dataset: failures and memory.

def tiny_run(tmp_path, trials, lr="0.05", trainer=Fit, **options):
    path = tmp_path / "space.toml"
    path.write_text(f"[arch]\nstages = 1\nblocks = 1\nwidths = [4, 8]\n[recipe]\nepochs = 1\nbatch_size = 128\nlr = {lr}\n")
    study = studies.create_study("t", optuna.storages.InMemoryStorage(), seed=0)
    opts = searches.RunOptions(trials=trials, max_params=10_000, artifacts=tmp_path / "artifacts", **options)
    with Reporter(trials, 0) as reporter:
        result = searches.run(study, spaces.load(path), opts, reporter, splits=tiny_splits, trainer=trainer)
    return study, result


def test_a_dead_trial_whose_retry_was_never_queued_gets_one(tmp_path):
    """A worker killed between Optuna's two writes (fail the stale trial, queue its retry)
    leaves a dead trial with no retry; the next worker queues it, once the grace period has
    passed (before that, the failing worker may still be about to)."""
    space = tmp_path / "space.toml"
    space.write_text("[arch]\nstages = 1\nblocks = 1\nwidths = [4, 8]\n[recipe]\nepochs = 1\nbatch_size = 128\nlr = 0.05\n")
    study = studies.create_study("t", stores.open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True, heartbeat=1), seed=0)

    def run(trials, grace):
        opts = searches.RunOptions(trials=trials, max_params=10_000, artifacts=tmp_path / "artifacts", grace=grace)
        with Reporter(trials, 0) as reporter:
            searches.run(study, spaces.load(space), opts, reporter, splits=tiny_splits)
        return study.get_trials(deepcopy=False)

    (first,) = run(1, grace=60)
    study.add_trial(optuna.trial.create_trial(  # what the killed worker left: FAIL, and nothing queued
        state=TrialState.FAIL, params=first.params, distributions=first.distributions,
        user_attrs={**first.user_attrs, "origin": 1}))
    assert records.end_reason(study.trials[1]) == "worker_died"
    trials = run(2, grace=60)  # failed a moment ago: not this worker's to retry yet
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    time.sleep(0.6)
    trials = run(3, grace=0.5)
    (retry,) = [t for t in trials if t.system_attrs.get("retry_history") == [1]]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["config"] == first.user_attrs["config"]
    assert run(4, grace=0.5)[-1].system_attrs.get("retry_history") is None  # queued once, not again


def test_failing_trials_are_recorded_and_the_worker_goes_on(tmp_path, monkeypatch):
    calls = []

    def flaky_fit(config, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if len(calls) == 3:
            raise ValueError("something broke\nin two lines")
        return Fit(config, *args, **kwargs)

    study, result = tiny_run(tmp_path, trials=3, trainer=flaky_fit)
    assert result.trained == 3 and not result.failed_out
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [records.end_reason(t) for t in failed] == ["out_of_memory", "error"]
    assert failed[0].user_attrs["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert failed[1].user_attrs["error"] == "ValueError: something broke in two lines"


def test_max_failures_stops_a_run_that_fails_trial_after_trial(tmp_path, monkeypatch):
    always = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("always"))  # noqa: E731
    study, result = tiny_run(tmp_path, trials=5, max_failures=3, trainer=always)
    assert result.failed_out and result.trained == 0
    assert len(study.trials) == 3 and all(t.state == TrialState.FAIL for t in study.trials)


def test_a_diverging_trial_is_pruned_at_once(tmp_path):
    study, result = tiny_run(tmp_path, trials=1, lr="1e12")
    (t,) = study.trials
    assert t.state == TrialState.PRUNED and t.user_attrs["reason"] == "diverged"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def live_torch_objects() -> tuple[int, int]:
    gc.collect()
    objects = gc.get_objects()
    return sum(isinstance(o, torch.Tensor) for o in objects), sum(isinstance(o, torch.nn.Module) for o in objects)


def test_memory_stays_flat_across_50_trials(tmp_path, monkeypatch):
    """Nothing of a trial survives it: the same live tensors and modules after trial 10 and
    after trial 50 (the exact check), and no upward drift of RSS past the allocator's warm-up
    (a leak of a model or a batch per trial would add tens of MiB over 25 trials)."""
    rss, live = [], {}
    finished = Reporter.finished

    def record(self, *args):
        finished(self, *args)
        rss.append(rss_mib())
        if self.done in (10, 50):
            live[self.done] = live_torch_objects()

    monkeypatch.setattr(Reporter, "finished", record)
    tiny_run(tmp_path, trials=50)
    assert len(rss) == 50
    assert live[10] == live[50], live
    drift = max(rss[25:]) - max(rss[:25])
    assert drift < 32, f"RSS drifted {drift:.1f} MiB: {[round(x) for x in rss]}"


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpus_without_cuda(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert "CUDA is not available" in refusal(capsys, "run", *SMOKE, "--gpus", "0,1")
    assert not (workdir / "studies").exists()
