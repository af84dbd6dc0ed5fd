"""cerberus.optim: the optimizer and schedule registries."""

import math

import pytest
import torch

from cerberus import memory, size
from cerberus.config import Arch, Augment, Config, Recipe
from cerberus.data import search_splits, synthetic
from cerberus.fit import Fit, Trainer, evaluate, fit
from cerberus.optim import SCHEDULES
from cerberus.precision import choose

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits():
    return search_splits("synthetic")


@pytest.mark.parametrize("optimizer", ["adadelta", "adadelta_agc"])
def test_adadelta_trains_with_the_one_cycle_schedule(optimizer):
    config = Config(Arch((1,), (4,)), Recipe(optimizer=optimizer, lr=1.0, schedule="onecycle", epochs=1, batch_size=64))
    trainer = Trainer(config, synthetic(128, seed=1), CPU)  # raised ValueError: no momentum to cycle
    assert torch.isfinite(trainer.step(next(trainer.batches())))


@pytest.mark.parametrize("optimizer, lr, schedule", [
    ("sgd", 0.05, "step"), ("adam", 3e-3, "onecycle"), ("adamw", 3e-3, "cosine"),
    ("adadelta", 5.0, "cosine"), ("adadelta_agc", 5.0, "cosine"),
])
def test_every_optimizer_and_schedule_trains(splits, optimizer, lr, schedule):
    train, val = splits
    config = Config(Arch((1,), (8,)), Recipe(optimizer=optimizer, lr=lr, schedule=schedule, epochs=1, batch_size=128,
                                             label_smoothing=0.1, augment=Augment(crop_padding=4, flip=True, rotation=10,
                                                                                  cutout_holes=1, mixup_alpha=0.2, cutmix_alpha=1.0)))
    result = fit(config, train, val, CPU, seed=0)
    assert math.isfinite(result.val_accuracy) and result.val_accuracy > 0.12


def learning_rates(schedule: str, warmup: float, steps: int = 100) -> list[float]:
    """The learning rate of each of ``steps`` steps under ``schedule``, peaking at 1."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = SCHEDULES[schedule].build(opt, Recipe(lr=1.0, schedule=schedule, warmup=warmup), steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_ramps_the_learning_rate_before_cosine_decay():
    lrs = learning_rates("cosine", 0.1)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10])) and lrs[-1] < 0.01


def test_the_average_of_the_weights_is_the_hand_computed_one():
    from cerberus.optim import Average

    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    average = Average(model, decay=0.9)
    seen = []
    for w in (1.0, 3.0, 5.0, 7.0):
        with torch.no_grad():
            model[0].weight.fill_(w)
            model[1].running_mean.fill_(w)
        model[1].num_batches_tracked += 1
        average.update()
        seen.append(w)
    # update 1 copies; update t >= 2 keeps min(0.9, (1 + t) / (10 + t)) of the average
    expected = seen[0]
    for t, w in enumerate(seen[1:], 2):
        keep = min(0.9, (1 + t) / (10 + t))
        expected = keep * expected + (1 - keep) * w
    averaged = average.evaluated
    assert averaged[0].weight.flatten().tolist() == pytest.approx([expected] * 2)
    assert averaged[1].running_mean.item() == pytest.approx(expected)  # the statistics are averaged too
    assert averaged[1].num_batches_tracked.item() == 4  # the counter is the model's
    assert model[0].weight[0, 0].item() == 7.0  # the model itself is untouched


def test_a_fit_with_an_average_scores_and_saves_the_average_and_resumes_it(splits):
    train, val = splits
    config = Config(Arch((1,), (8,)), Recipe(optimizer="nesterov", lr=0.05, epochs=2, batch_size=64, ema=0.9))
    with Fit(config, train, val, CPU, seed=0) as run:
        next(iter(run))
        state = run.state()
        trainer = run.trainer
        assert trainer.evaluated is not trainer.model
        weights = trainer.weights()
        raw = trainer.model.state_dict()
        assert set(weights) == set(raw) and not torch.equal(weights["linear.weight"], raw["linear.weight"].cpu())
        assert run.trainer.evaluate(val) == evaluate(trainer.evaluated, val, trainer.mean, trainer.std)
    with Fit(config, train, val, CPU, seed=1) as resumed:
        resumed.restore(state)
        assert torch.equal(resumed.trainer.weights()["linear.weight"], weights["linear.weight"])
        assert resumed.trainer.updates.average.updates == state["updates"]["average"]["updates"] > 0


def test_the_memory_estimate_counts_the_average():
    plain = Config(Arch((3, 5, 3), (16, 32, 64)), Recipe())
    averaged = Config(plain.arch, Recipe(ema=0.99))
    extra = memory.estimate(averaged, choose(CPU, "fp32"), 45_000, 5_000).optimizer - \
        memory.estimate(plain, choose(CPU, "fp32"), 45_000, 5_000).optimizer
    layers, channels = size.norms(plain.arch)
    assert extra == 4 * size.params(plain.arch) + 8 * channels + 8 * layers


def test_the_average_is_a_choice_of_a_space_file_and_shows_in_best(tmp_path):
    import optuna

    from cerberus import space as spaces
    from cerberus.errors import UserError

    head = "[arch]\nstages = 1\nblocks = 1\nwidths = 8\n[recipe]\n"
    space = spaces.parse(head + "ema = [0.0, 0.99]\n", "s.toml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        seen.add(space.sample(trial).recipe.ema)
        study.tell(trial, 0.0)
    assert seen == {0.0, 0.99}
    assert "ema 0.99" in Config(Arch((1,), (8,)), Recipe(ema=0.99)).summary()
    with pytest.raises(UserError, match=r"\[recipe\] ema: 1.5 is not allowed; allowed: numbers in \[0, 1\)"):
        spaces.parse(head + "ema = 1.5\n", "s.toml")


def test_filter_muon_steps_as_torch_muon_does_on_the_same_matrix():
    """With bf16 iterations (torch's) and filters already at norm sqrt(out) (airbench's renormalisation
    then changes nothing), FilterMuon's step on a filter bank is torch.optim.Muon's on its matrix."""
    from cerberus.muon import FilterMuon

    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    w = w / w.norm() * 4  # sqrt(16)
    grads = [torch.randn_like(w) for _ in range(3)]
    ours = torch.nn.Parameter(w.clone())
    theirs = torch.nn.Parameter(w.clone().view(16, -1))
    mine = FilterMuon([ours], lr=0.05, momentum=0.6, native_bf16=True)
    torchs = torch.optim.Muon([theirs], lr=0.05, momentum=0.6, nesterov=True, weight_decay=0.0)
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone().view(16, -1)
        mine.step()
        torchs.step()
        with torch.no_grad():  # undo the renormalisation's drift on torch's side, as ours does before each step
            theirs.mul_(4 / theirs.norm())
    assert torch.allclose(ours.detach().view(16, -1), theirs.detach(), atol=2e-3)


def test_filter_muon_in_fp32_orthogonalises_and_keeps_each_bank_at_norm_sqrt_out():
    from cerberus.muon import FilterMuon, orthogonalise

    torch.manual_seed(1)
    g = torch.randn(32, 72)
    o = orthogonalise(g, torch.float32)
    singular = torch.linalg.svdvals(o)
    assert 0.5 < singular.min() and singular.max() < 1.5  # Keller Jordan's iteration: singular values near 1
    w = torch.nn.Parameter(torch.randn(32, 8, 3, 3) * 7)
    w.grad = torch.randn_like(w)
    FilterMuon([w], lr=0.0, momentum=0.6, native_bf16=False).step()
    assert w.norm().item() == pytest.approx(32 ** 0.5, rel=1e-5)


def test_the_linear_schedule_warms_up_then_decays_linearly_to_near_zero():
    lrs = learning_rates("linear", 0.1)
    assert lrs[9] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.5, abs=0.02) and 0 < lrs[-1] <= 0.012


def test_muon_trains_the_fast_family_and_groups_take_their_learning_rates(splits):
    train, val = splits
    arch = Arch((1, 1), (16, 32), stem="whiten", downsample="pool", activation="gelu", conv_init="identity",
                bn_weight="frozen", bn_momentum=0.4, pool_type="max")
    recipe = Recipe(optimizer="muon", lr=0.2, momentum=0.85, weight_decay=4e-3, schedule="linear", epochs=2,
                    batch_size=250, label_smoothing=0.2, lr_bias_scale=20.0, lr_head_scale=0.1)
    trainer = Trainer(Config(arch, recipe), train, CPU)
    groups = trainer.model.parameter_groups()
    muon, sgd = trainer.updates.optimizers
    assert muon.param_groups[0]["params"] == groups["filters"]
    assert sorted(g["lr"] for g in sgd.param_groups) == pytest.approx([0.2 * 0.1, 0.2 * 20.0])
    assert all(g["weight_decay"] == pytest.approx(4e-3 / g["lr"]) for g in sgd.param_groups)
    result = fit(Config(arch, recipe), train, val, CPU, seed=0)
    assert result.val_accuracy > 0.5
