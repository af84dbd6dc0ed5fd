"""The search loop in-process: budget rejection without a model or data, and the constraint
that lets TPE learn the budget from pruned trials."""

import optuna
import pytest
import torch
from optuna.trial import TrialState

from cerberus import data as datasets
from cerberus.config import Arch
from cerberus import model as models
from cerberus import size as sizes
from cerberus import space as spaces
from cerberus import loop as searches
from cerberus import study as studies
from cerberus.errors import UserError
from cerberus.progress import Reporter


def write_space(tmp_path, widths="[8, 64]"):
    path = tmp_path / "space.toml"
    path.write_text(f"[arch]\nstages = 1\nblocks = 1\nwidths = {widths}\n[recipe]\nepochs = 1\nbatch_size = 256\nlr = 0.05\n")
    return spaces.load(path)


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


def test_a_budget_nothing_meets_is_refused_up_front(tmp_path):
    space = write_space(tmp_path)
    with pytest.raises(UserError, match="no architecture in .* fits --max-params 1,000: the smallest has 1,506"):
        studies.check_budget(space, 1_000)
    studies.check_budget(space, 1_506)


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
