"""cerberus.optim: the optimizer and schedule registries."""

import math

import pytest
import torch

from cerberus.config import Arch, Augment, Config, Recipe
from cerberus.data import search_splits, synthetic
from cerberus.fit import Trainer, fit
from cerberus.optim import SCHEDULES

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


def test_warmup_ramps_the_learning_rate_before_cosine_decay():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = SCHEDULES["cosine"].build(opt, Recipe(lr=1.0, schedule="cosine", warmup=0.1), 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10])) and lrs[-1] < 0.01
