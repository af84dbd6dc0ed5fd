"""cerberus.liveness: killed workers, stale trials, orphaned retries and dead checkpoints."""

import os
import random
import signal
import time

import optuna
import pytest
from conftest import cli, popen, tiny_splits
from optuna.trial import TrialState

from cerberus import checkpoint as checkpoints
from cerberus import liveness
from cerberus import search as searches
from cerberus import space as spaces
from cerberus import storage as stores
from cerberus import study as studies
from cerberus import trials as records
from cerberus.reporter import Reporter

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu", "--heartbeat", "1")


GRACE = 3.5  # a little over 3 heartbeats: then a dead worker's trial is stale


def load(db):
    return optuna.load_study(study_name="cerberus", storage=f"sqlite:///{db}").get_trials(deepcopy=False)


def trained(trials):
    return [t for t in trials if records.is_trained(t)]


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


def wait_for_epoch(db, epoch, of, proc, limit=120):
    """The running trial once it has reported epoch `epoch` of `of` (trials report at the share of
    their steps done, in percent)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.exists():
            try:
                running = [t for t in load(db) if t.state == TrialState.RUNNING]
            except Exception:
                running = []
            if running and max(running[0].intermediate_values, default=0) >= 100 * epoch / of:
                return running[0]
        time.sleep(0.2)
    pytest.fail(f"no trial reached epoch {epoch}")


def _trial(study, state, origin, **attrs):
    study.add_trial(optuna.trial.create_trial(state=state, values=[0.5] if state == TrialState.COMPLETE else None,
                                              user_attrs={"origin": origin, **attrs}))



@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing(workdir):
    """4 runs of the same command, two at a time on one study (as `--workers 2` runs them), each
    SIGKILLed at its own random moment: one at any moment from launch, start-up included, the
    other inside the trial loop (sampling, training, checkpointing, writing); then the same
    command once more completes the study."""
    db = workdir / "studies" / "cerberus.db"
    args = ("run", *SMOKE, "--trials", "4", "--epochs", "2", "--seed", "3")
    rng = random.Random(0)
    completed: set[int] = set()
    for _ in range(2):  # 4 kills: the suite stays under 10 minutes on 2 cores
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
    assert len(trained(trials)) >= 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    died = [t for t in trials if t.state == TrialState.FAIL]
    assert died, "4 kills and not one during a trial: the test did not test"
    for t in died:
        assert records.end_reason(t) == "worker_died"
        # Optuna's retry callback records the chain of earlier attempts in each retry.
        retried = [u for u in trials if t.number in u.system_attrs.get("retry_history", [])]
        last_allowed = records.deaths(t, trials) >= stores.MAX_RETRY
        assert retried or last_allowed, f"trial {t.number} died and was never retried"
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    waiting = {t.user_attrs["origin"] for t in trials if t.state == TrialState.WAITING}  # queued retries
    left = {int(p.stem.split("-")[1]) for p in (workdir / "studies" / "cerberus" / "checkpoints").glob("*.pt")}
    assert left <= waiting  # every checkpoint left is one a queued retry will resume


@pytest.mark.slow
# SIGKILL's path (the heartbeat fails the trial, the retry resumes from the checkpoint) is
# test_storage_proxy.py's killed worker and this file's random kills: one case here keeps the suite short.
@pytest.mark.parametrize("sigs, reason", [((signal.SIGTERM, signal.SIGTERM), "interrupted")], ids=["SIGTERM twice"])
def test_a_stopped_trial_resumes_from_its_last_epoch(workdir, sigs, reason):
    """SIGTERM (a second one as it exits included) ends the trial `interrupted` and queues it, so
    the same command resumes it at once; SIGKILL leaves it to the heartbeat. Ctrl-C takes the
    same path as SIGTERM (cerberus.signals); test_launch.py sends it to a run, test_train.py to a
    retraining."""
    db = workdir / "studies" / "cerberus.db"
    args = ("run", *SMOKE, "--trials", "1", "--epochs", "4", "--checkpoint-every", "0")
    proc = popen(*args, cwd=workdir)
    victim = wait_for_epoch(db, 3, 4, proc)  # epoch 2's checkpoint is written before epoch 3 trains
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
    assert sorted(retry.intermediate_values) == [25, 50, 75, 100]
    for epoch, value in first.intermediate_values.items():  # the same curve, not retrained
        assert retry.intermediate_values[epoch] == value
    assert not list((workdir / "studies" / "cerberus" / "checkpoints").glob("*.pt"))  # removed at the end


@pytest.mark.slow
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


def test_the_sweep_keeps_a_dead_trials_checkpoint_until_its_retry_and_removes_stray_tmp_files(tmp_path):
    study = optuna.create_study(direction="maximize")
    _trial(study, TrialState.COMPLETE, 0)
    _trial(study, TrialState.FAIL, 1)  # killed: no reason; its retry is still to be queued (grace)
    _trial(study, TrialState.FAIL, 2, reason="error")  # failed for good: nothing will resume it
    folder = tmp_path / checkpoints.FOLDER
    folder.mkdir()
    for n in range(3):
        (folder / f"trial-{n}.pt").write_bytes(b"x")
    old, fresh = folder / ".trial-1.pt.abc.tmp", folder / ".trial-1.pt.def.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    past = time.time() - checkpoints.STALE_TMP_SECONDS - 5
    os.utime(old, (past, past))
    liveness.sweep_checkpoints(study, tmp_path, grace=30, max_retry=2)
    assert sorted(p.name for p in folder.iterdir()) == [fresh.name, "trial-1.pt"]


def test_a_trial_stopped_by_a_person_is_queued_again_however_often_it_was_retried(tmp_path):
    """Stopped by Ctrl-C, killed, then stopped again: the third stop found the retry limit spent
    and queued nothing, although the run said the trial would resume (found by hand: a run of
    the cpu space interrupted, killed with SIGKILL, then stopped by `timeout`)."""
    study = optuna.create_study(storage=stores.open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("reason", records.Reason.INTERRUPTED)
    study._storage.set_trial_system_attr(trial._trial_id, "retry_history", list(range(stores.MAX_RETRY)))
    study.tell(trial, state=TrialState.FAIL)
    liveness.queue_again(study, trial.number)
    (queued,) = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert queued.params == study.trials[0].params and queued.system_attrs["retry_history"][-1] == trial.number


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_the_retry_limit_counts_dead_workers_not_stops_by_a_person(tmp_path):
    """Through the storage's own heartbeat (Optuna's fail_stale_trials): a trial stopped three
    times by a person, then killed, is queued again, since only deaths count against the limit
    (before, Optuna's count of its history spent the limit on the stops); a trial whose workers
    died MAX_RETRY times is not."""
    storage = stores.open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1)
    study = optuna.create_study(storage=storage)
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def attempt(history, reason=None, running=False):
        trial = study.ask(x)
        if history:
            storage.set_trial_system_attr(trial._trial_id, "retry_history", history)
        if running:
            storage.record_heartbeat(trial._trial_id)
            return trial.number
        if reason:
            trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        return trial.number

    stopped = [attempt([], records.Reason.INTERRUPTED)]
    for _ in range(2):
        stopped.append(attempt(list(stopped), records.Reason.INTERRUPTED))
    killed_after_stops = attempt(list(stopped), running=True)
    died = [attempt([])]
    for _ in range(stores.MAX_RETRY - 1):
        died.append(attempt(list(died)))
    killed_once_too_often = attempt(list(died), running=True)
    time.sleep(stores.grace_period(1) + 1.2)  # SQLite's clock counts whole seconds
    optuna.storages.fail_stale_trials(study)
    queued = [t.system_attrs["retry_history"] for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    assert queued == [[*stopped, killed_after_stops]], (queued, killed_once_too_often)
