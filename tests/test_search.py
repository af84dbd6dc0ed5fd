"""cerberus.search: one worker's search loop: sampling, rejections, fitting, recording, stopping."""

import gc
import json
import resource

import optuna
import pytest
import torch
from conftest import ROOT, cli, run_cli, tiny_splits
from optuna.trial import TrialState

from cerberus import checkpoint as checkpoints
from cerberus import data as datasets
from cerberus import liveness, memory
from cerberus import model as models
from cerberus import search as searches
from cerberus import size as sizes
from cerberus import space as spaces
from cerberus import study as studies
from cerberus import trials as records
from cerberus.config import Arch, Config, Recipe
from cerberus.fit import Fit
from cerberus.precision import choose
from cerberus.reporter import Reporter

CPU = torch.device("cpu")


SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu")


def load(workdir, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / 'cerberus.db'}")


def tiny_run(tmp_path, trials, lr="0.05", trainer=Fit, **options):
    path = tmp_path / "space.toml"
    path.write_text(f"[arch]\nstages = 1\nblocks = 1\nwidths = [4, 8]\n[recipe]\nepochs = 1\nbatch_size = 128\nlr = {lr}\n")
    study = studies.create_study("t", optuna.storages.InMemoryStorage(), seed=0)
    opts = searches.RunOptions(trials=trials, max_params=10_000, artifacts=tmp_path / "artifacts", **options)
    with Reporter(trials, 0) as reporter:
        result = searches.run(study, spaces.load(path), opts, reporter, splits=tiny_splits, trainer=trainer)
    return study, result


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def live_torch_objects() -> tuple[int, int]:
    gc.collect()
    objects = gc.get_objects()
    return sum(isinstance(o, torch.Tensor) for o in objects), sum(isinstance(o, torch.nn.Module) for o in objects)


def _run(tmp_path, every, epochs=3, pruner=None, gpu=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "space.toml"
    path.write_text(f"[arch]\nstages = 1\nblocks = 1\nwidths = 4\n[recipe]\nepochs = {epochs}\nbatch_size = 128\nlr = 0.05\n")
    study = studies.create_study("t", optuna.storages.InMemoryStorage(), seed=0)
    if pruner is not None:
        study.pruner = pruner
    opts = searches.RunOptions(trials=1, max_params=10_000, artifacts=tmp_path / "a", checkpoint_every=every, gpu=gpu)
    with Reporter(1, 0) as reporter:
        searches.run(study, spaces.load(path), opts, reporter, splits=tiny_splits)
    return study.trials[0]


@pytest.fixture
def saves(monkeypatch):
    seen = []
    real = checkpoints.save
    monkeypatch.setattr(checkpoints, "save", lambda path, state: seen.append(len(state["history"])) or real(path, state))
    return seen


class _CutAt:
    """A pruner that cuts every trial once it reports ``percent`` of its steps done (the search
    reports each epoch at the percent of the trial's steps it has done)."""

    def __init__(self, percent):
        self.percent = percent

    def prune(self, study, trial):
        return max(trial.intermediate_values, default=0) >= self.percent


def write_space(tmp_path, widths="[8, 64]"):
    path = tmp_path / "space.toml"
    path.write_text(f"[arch]\nstages = 1\nblocks = 1\nwidths = {widths}\n[recipe]\nepochs = 1\nbatch_size = 256\nlr = 0.05\n")
    return spaces.load(path)



@pytest.mark.slow
def test_a_trial_that_cannot_fit_ends_pruned_untrained(workdir, monkeypatch):
    """A real smoke search under CERBERUS_MEMORY_LIMIT set between what its two first-stage
    widths need: the wide nets end PRUNED over_memory, untrained and infeasible for TPE; the
    narrow one trains, and only it counts towards --trials."""
    need = {w: memory.estimate(Config(Arch((1,), (w,)), Recipe(optimizer="nesterov", batch_size=64)), choose(CPU), 4500, 500).total
            for w in (8, 16)}
    assert need[8] < need[16]
    limit = int((need[8] + need[16]) / 2 / memory.HEADROOM)
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, str(limit))
    r = cli("run", "--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu", "--trials", "1",
            "--seed", "3", cwd=workdir)  # seed 3: a wide net first, then a narrow one
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="cerberus", storage=f"sqlite:///{workdir}/studies/cerberus.db")
    over = [t for t in study.trials if t.user_attrs.get("reason") == "over_memory"]
    trained = [t for t in study.trials if records.is_trained(t)]
    assert over and len(trained) == 1 == records.count_trained(study), [t.params for t in study.trials]
    assert "MiB of memory >" in r.stderr and "untrained (over budget or memory)" in r.stderr
    for t in over:
        assert t.state == TrialState.PRUNED and t.params["widths_1"] == 16
        assert t.user_attrs["memory_bytes"] > memory.HEADROOM * t.user_attrs["memory_available_bytes"]
        assert t.user_attrs["memory_available_bytes"] == limit
        assert t.constraints["memory"] > 0 and not t.intermediate_values and "epochs" not in t.user_attrs
    for t in trained:
        assert t.params["widths_1"] == 8 and "memory" not in t.constraints and t.user_attrs["epochs"] == 1
        assert memory.HEADROOM * limit >= t.user_attrs["memory_bytes"] > 0


@pytest.mark.slow
def test_latency_objective_is_measured_on_the_device_per_trial(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)  # in this process: the same app, without seconds of imports
    assert run_cli("run", *SMOKE, "--trials", "2", "--study", "lat", "--objectives", "accuracy,latency") == 0
    complete = load(workdir, "lat").get_trials(states=(TrialState.COMPLETE,))
    assert complete
    for t in complete:
        assert t.values[1] == t.user_attrs["latency_ms"] > 0 and t.user_attrs["latency_batch"] == 256
    capsys.readouterr()
    assert run_cli("best", "--study", "lat", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(row["latency_ms"] > 0 for row in rows)


@pytest.mark.slow
def test_a_trial_records_the_precision_it_trained_in(workdir):
    from conftest import cli as run

    r = run("run", "--space", "smoke", "--data", "synthetic", "--device", "cpu", "--trials", "1", "--precision", "fp32",
            cwd=workdir)
    assert r.returncode == 0, r.stderr
    (trial,) = optuna.load_study(study_name="cerberus", storage=f"sqlite:///{workdir}/studies/cerberus.db").trials
    assert trial.user_attrs["precision"] == "fp32" and len(trial.user_attrs["epoch_seconds"]) == 1


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


@pytest.mark.slow
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


def test_a_retry_clears_what_its_original_recorded_about_how_it_ended(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"], storage=optuna.storages.InMemoryStorage())
    space = spaces.load(ROOT / "search" / "smoke.toml")
    trial = study.ask()
    config = space.sample(trial)
    for key, value in {"origin": trial.number, "config": config.to_dict(), "val_history": [0.1, 0.2],
                       "latency_ms": 3.5, "latency_batch": 256, "reason": "interrupted"}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, state=TrialState.FAIL)
    liveness.retry(study, study.trials[0])
    retry = study.ask()
    assert retry.user_attrs["val_history"] == [0.1, 0.2]  # what Optuna's retry callback copies
    with Reporter(1, 0) as reporter:
        search = searches.Search(study, space, searches.RunOptions(trials=1, objectives=("accuracy", "latency")), reporter)
        assert search.configure(retry) == config
    for key in ("val_history", "latency_ms", "latency_batch", "reason"):
        assert retry.user_attrs[key] is None


def test_checkpoints_skip_the_last_epoch_and_wait_their_interval(tmp_path, saves):
    trial = _run(tmp_path, every=0, gpu=3)
    assert saves == [1, 2] and trial.user_attrs["gpu"] == 3  # never the last epoch's
    saves.clear()
    _run(tmp_path / "b", every=3600)
    assert saves == []  # the interval has not passed: nothing stalls the step


def test_a_pruned_epoch_is_not_saved(tmp_path, saves):
    trial = _run(tmp_path, every=0, epochs=4, pruner=_CutAt(50))  # after epoch 2 of 4
    assert trial.user_attrs["reason"] == "pruned" and saves == [1]


@pytest.mark.slow
def test_over_budget_trials_build_no_model_and_touch_no_data(tmp_path, monkeypatch):
    built, loads = [], []
    real_init, real_splits = models.ResNet.__init__, datasets.search_splits

    def spy_init(self, arch):
        built.append((arch.widths, torch.empty(0).device.type))  # the default device in force
        real_init(self, arch)

    def spy_splits(*args):
        loads.append(args)
        return real_splits(*args)

    monkeypatch.setattr(models.ResNet, "__init__", spy_init)
    monkeypatch.setattr(datasets, "search_splits", spy_splits)
    space = write_space(tmp_path)
    small, big = (sizes.params(Arch((1,), (w,))) for w in (8, 64))
    assert small < 5_000 < big
    study = studies.create_study("t", optuna.storages.InMemoryStorage(), seed=0)
    opts = searches.RunOptions(trials=3, max_params=5_000, data="synthetic")
    with Reporter(3, 0) as reporter:
        result = searches.run(study, space, opts, reporter)

    rejected = [t for t in study.trials if t.user_attrs.get("reason") == "over_budget"]
    assert result.trained == 3 and result.rejected_now == len(rejected) >= 1
    for t in rejected:
        assert t.state == TrialState.PRUNED and t.user_attrs["params"] == big
        assert t.constraints == {"params": big - 5_000}
        assert not t.intermediate_values and "epochs" not in t.user_attrs
    assert {w for w, device in built if device != "meta"} == {(8,)}  # real models: in budget only
    assert len(loads) == 1  # data loaded once, for the first trained trial
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.constraints == {"params": small - 5_000}
            assert set(t.user_attrs) >= {"params", "flops", "epochs", "train_seconds", "images_per_s", "device", "config"}


def test_no_data_is_read_when_every_trial_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "search_splits", lambda *a: pytest.fail("data was read"))
    monkeypatch.setattr(searches, "MAX_REJECTIONS_IN_A_ROW", 5)
    space = write_space(tmp_path, widths="[8, 64]")
    study = studies.create_study("t", optuna.storages.InMemoryStorage(), seed=0)
    for _ in range(5):  # width 8 fits the budget, but the study only ever gets width 64
        study.enqueue_trial({"widths_1": 64})
    with Reporter(1, 0) as reporter:
        result = searches.run(study, space, searches.RunOptions(trials=1, max_params=5_000), reporter)
    assert result.gave_up and result.trained == 0 and result.rejected_now == 5
    assert all(t.user_attrs.get("reason") == "over_budget" for t in study.trials)


def test_tpe_learns_the_budget_from_pruned_trials():
    """Pins what cerberus relies on: a constraint set on a PRUNED trial is stored with it, and
    cerberus's sampler then keeps out of the infeasible region (70% of the line), which random
    sampling would hit 70% of the time. (With the optimum on the budget's edge, as accuracy
    against size often is, half the samples land either side: rejections there cost milliseconds.)"""
    study = studies.create_study("toy", optuna.storages.InMemoryStorage(), seed=0)

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        trial.set_constraint("budget", x - 0.3)
        if x > 0.3:
            raise optuna.TrialPruned()
        return -((x - 0.1) ** 2)

    study.optimize(objective, n_trials=60)
    late = study.trials[30:]
    infeasible = sum(t.params["x"] > 0.3 for t in late) / len(late)
    assert all(t.constraints for t in study.trials)
    assert infeasible < 0.3, infeasible  # random sampling would sit near 0.7


def test_a_budgeted_trial_records_its_training_flops_and_reports_at_shares_of_its_steps(tmp_path):
    """Trials sized in compute: --budget gives each trial 1e-5 PFLOP; the two widths get different
    epochs, every trial reports at the percent of its steps done, and records its training FLOPs."""
    from cerberus import size

    study, result = tiny_run(tmp_path, trials=4, budget=1e-5)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 2
    for t in done:
        config = Config.from_dict(t.user_attrs["config"])
        plan = size.plan(config, 600)  # tiny_splits: 600 training images
        assert config.recipe.budget == 1e-5 and t.user_attrs["train_flops"] == plan.flops <= 1e-5 * 1e15
        assert t.user_attrs["epochs"] == plan.epochs
        assert max(t.intermediate_values) == 100 and all(0 < s <= 100 for s in t.intermediate_values)
    assert len({t.user_attrs["epochs"] for t in done}) == 2  # widths 4 and 8: as many FLOPs, not as many epochs


def test_accuracy_against_training_flops_is_a_two_objective_study(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("[arch]\nstages = 1\nblocks = 1\nwidths = [4, 8]\n[recipe]\nepochs = [1, 2]\nbatch_size = 128\n")
    study = studies.create_study("f", optuna.storages.InMemoryStorage(), seed=0, objectives=("accuracy", "flops"))
    opts = searches.RunOptions(trials=4, max_params=10_000, objectives=("accuracy", "flops"))
    with Reporter(4, 0) as reporter:
        searches.run(study, spaces.load(path), opts, reporter, splits=tiny_splits)
    for t in study.trials:
        assert t.values[1] == t.user_attrs["train_flops"] > 0
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]


@pytest.mark.parametrize("kind", ["text", "another-net"])
def test_a_checkpoint_that_cannot_be_resumed_is_set_aside_and_the_trial_trains_from_scratch(tmp_path, kind):
    """A queued retry used to fail on it (IndexError, RuntimeError): now the file is kept aside,
    the trial says so, and it trains from scratch."""
    folder = tmp_path / "artifacts" / "checkpoints"
    folder.mkdir(parents=True)
    path = folder / "trial-0.pt"  # the first trial's: its origin is 0
    if kind == "text":
        path.write_text("not a checkpoint\n" * 10)
    else:
        train, val = tiny_splits()
        with Fit(Config(Arch((2,), (16,)), Recipe(epochs=1, batch_size=128)), train, val, CPU) as other:
            list(other)
            checkpoints.save(path, other.state())
    study, _ = tiny_run(tmp_path, trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["checkpoint_discarded"].startswith("trial-0.pt.discarded: ")
    assert (folder / "trial-0.pt.discarded").exists() and not path.exists()
