import math

import pytest
import torch

from cerberus import augment
from cerberus.config import Arch, Augment, Config, Recipe
from cerberus.data import search_splits
from cerberus.train import fit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits():
    return search_splits("synthetic")


def test_a_tiny_net_learns_synthetic_data_in_one_epoch(splits):
    config = Config(Arch((1, 1), (16, 32)), Recipe(optimizer="nesterov", lr=0.05, epochs=1, batch_size=64))
    seen = []
    result = fit(config, *splits, CPU, on_epoch=lambda e, a: seen.append((e, a)) or False, seed=0)
    assert result.val_accuracy > 0.3, result  # chance is 0.1
    assert seen == [(1, result.val_accuracy)] and result.epochs == 1 and not result.stopped
    assert result.images_per_s > 0 and result.train_seconds > 0


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


def test_on_epoch_can_stop_a_run(splits):
    config = Config(Arch((1,), (8,)), Recipe(lr=0.05, epochs=3, batch_size=256))
    result = fit(config, *splits, CPU, on_epoch=lambda e, a: e == 1, seed=0)
    assert result.stopped and result.epochs == 1


def test_divergence_is_detected(splits):
    config = Config(Arch((1,), (8,)), Recipe(optimizer="sgd", lr=1e12, epochs=2, batch_size=256))
    result = fit(config, *splits, CPU, seed=0)
    assert result.diverged and result.epochs == 0


def test_cpu_runs_are_reproducible_with_a_seed(splits):
    config = Config(Arch((1,), (8,)), Recipe(lr=0.05, epochs=1, batch_size=128, augment=Augment(crop_padding=2, flip=True)))
    assert fit(config, *splits, CPU, seed=3).val_accuracy == fit(config, *splits, CPU, seed=3).val_accuracy


def test_augmentations_keep_shape_and_move_pixels():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    for out in (augment.crop(x, 4), augment.flip(x), augment.rotate(x, 10), augment.cutout(x, 2, 8)):
        assert out.shape == x.shape and not torch.equal(out, x)
    # crop is a pure translation: each output pixel is an input pixel or padding
    shifted = augment.crop(x, 4)
    assert set(shifted.unique().tolist()) <= set(x.unique().tolist()) | {0.0}
    # cutout zeroes at most holes * length^2 pixels per channel, and at least some
    zeros = (augment.cutout(x, 1, 8)[:, 0] == 0).flatten(1).sum(1)
    assert zeros.max() <= 64 and zeros.sum() > 0


def test_mixing_keeps_labels_a_distribution():
    torch.manual_seed(0)
    x, y = torch.rand(32, 3, 32, 32), torch.eye(10)[torch.arange(32) % 10]
    for mixup, cutmix in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
        mx, my = augment.mix(x, y, mixup, cutmix)
        assert mx.shape == x.shape and torch.allclose(my.sum(1), torch.ones(32))
