import math

import pytest
import torch

from cerberus import augment
from cerberus.config import Arch, Augment, Config, Recipe
from cerberus.data import search_splits
from cerberus.train import Fit, fit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits():
    return search_splits("synthetic")


def test_a_tiny_net_learns_synthetic_data_in_one_epoch(splits):
    config = Config(Arch((1, 1), (16, 32)), Recipe(optimizer="nesterov", lr=0.05, epochs=1, batch_size=64))
    with Fit(config, *splits, CPU, seed=0) as run:
        seen = [(e.number, e.val_accuracy) for e in run]
        result = run.result()
    assert result.val_accuracy > 0.3, result  # chance is 0.1
    assert seen == [(1, result.val_accuracy)] and result.epochs == 1 and not result.diverged
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


def test_the_caller_stops_a_run_by_leaving_its_loop(splits):
    config = Config(Arch((1,), (8,)), Recipe(lr=0.05, epochs=3, batch_size=256))
    with Fit(config, *splits, CPU, seed=0) as run:
        for epoch in run:
            if epoch.number == 1:
                break
        result = run.result()
    assert result.epochs == 1 and len(result.history) == 1


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


def _mixed(x, mx, my):
    """From labels that name each image (one class per image), each image's partner and the
    share of itself it kept; and whether its pixels are that mix (mixup) or a box (cutmix)."""
    kept, partner = my.diagonal(), (my - torch.diag(my.diagonal())).argmax(1)
    kinds = set()
    for i in range(len(x)):
        if partner[i] == i or kept[i] in (0, 1):
            continue
        blend = kept[i] * x[i] + (1 - kept[i]) * x[partner[i]]
        from_partner = (mx[i] == x[partner[i]]).all(0) & (mx[i] != x[i]).any(0)
        if torch.allclose(mx[i], blend, atol=1e-6):
            kinds.add("mixup")
        else:  # a box: every pixel is its own or its partner's, the partner's share as the labels say
            assert ((mx[i] == x[i]).all(0) | from_partner).all()
            assert abs(from_partner.float().mean() - (1 - kept[i])) < 1e-6
            kinds.add("cutmix")
    return kinds


def test_mixing_blends_or_pastes_the_shuffled_batch_as_its_labels_say():
    n = 32
    x, y = torch.rand(n, 3, 32, 32), torch.eye(n)
    for mixup, cutmix, want in ((1.0, 0.0, {"mixup"}), (0.0, 1.0, {"cutmix"}), (1.0, 1.0, {"mixup", "cutmix"})):
        seen = set()
        for seed in range(8):
            torch.manual_seed(seed)
            mx, my = augment.mix(x, y, mixup, cutmix)
            assert mx.shape == x.shape and torch.allclose(my.sum(1), torch.ones(n))
            seen |= _mixed(x, mx, my)
        assert seen == want, (mixup, cutmix)


def test_without_a_validation_split_nothing_is_scored_and_the_caller_sees_the_trained_model(splits):
    train, val = splits
    config = Config(Arch((1, 1), (16, 32)), Recipe(optimizer="nesterov", lr=0.05, epochs=1, batch_size=64, tta_flip=True))
    seen = {}
    with Fit(config, train, None, CPU, seed=0) as run:
        assert [e.val_accuracy for e in run] == [None]  # no epoch is scored
        seen["accuracy"] = run.trainer.evaluate(val)
        seen["weights"] = {k: v.clone() for k, v in run.trainer.model.state_dict().items()}
        result = run.result()
    assert result.epochs == 1 and result.history == [] and result.images_per_s > 0
    assert seen["accuracy"] > 0.3 and len(seen["weights"]) > 4


def test_flip_tta_scores_an_image_by_it_and_its_mirror():
    from cerberus.data import Split
    from cerberus.train import evaluate

    class Halves(torch.nn.Module):  # class 0 wants a bright left half, class 1 a bright right one
        def forward(self, x):
            left, right = x[:, 0, :, :16].mean((1, 2)), x[:, 0, :, 16:].mean((1, 2))
            return torch.cat([(left - right).unsqueeze(1), (right - left - 0.5).unsqueeze(1),
                              torch.full((len(x), 8), -10.0)], 1)

    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    images[:, :, :, 16:] = 255  # bright right half: class 1 alone, class 0 once mirrored is added
    split = Split(images, torch.zeros(4, dtype=torch.long))
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    assert evaluate(Halves(), split, zero, one, tta_flip=False) == 0.0
    assert evaluate(Halves(), split, zero, one, tta_flip=True) == 1.0


def test_warmup_ramps_the_learning_rate_before_cosine_decay():
    from cerberus.train import _scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = _scheduler(opt, Recipe(lr=1.0, schedule="cosine", warmup=0.1), total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10])) and lrs[-1] < 0.01
