"""cerberus.fit: one configuration trained as an iterator of epochs, and its training step."""

import dataclasses
import random

import numpy as np
import pytest
import torch

from cerberus import opcount
from cerberus.config import COURSE, Arch, Augment, Config, Recipe
from cerberus.data import search_splits, synthetic
from cerberus.fit import Fit, Tally, Trainer, fit, tta_logits

# What reads a device value on the host (on CUDA, each waits for the device).
SYNCS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


CPU = torch.device("cpu")


HEAVY = Config(COURSE.arch, dataclasses.replace(COURSE.recipe, optimizer="adadelta_agc", lr=1.0, augment=Augment(
    crop_padding=4, flip=True, trivial_augment=True, mixup_alpha=0.2, cutmix_alpha=1.0)))


def _clipped_one_tensor_at_a_time(params, clip, eps=1e-3):
    """The definition, tensor by tensor, unit by unit: what the batched clipping must equal."""
    out = []
    for p in params:
        w, g = p.detach(), p.grad
        dims = tuple(range(1, p.ndim))
        w_norm = (w.abs() if p.ndim == 1 else torch.linalg.vector_norm(w, dim=dims, keepdim=True)).clamp_min(eps)
        g_norm = g.abs() if p.ndim == 1 else torch.linalg.vector_norm(g, dim=dims, keepdim=True)
        out.append(g * torch.clamp(clip * w_norm / g_norm.clamp_min(1e-6), max=1))
    return out


@pytest.fixture(scope="module")
def splits():
    return search_splits("synthetic")



def test_the_counter_moves_every_step_and_reading_it_never_syncs(monkeypatch):
    """Every step updates the counter, and from the first step to the end of the fit the only
    host reads of a device value are the one loss read per epoch (an added `.item()`,
    `float(loss)`, `if loss > x`, `.cpu()` would count)."""
    train = synthetic(640, seed=1)
    config = Config(Arch((1,), (4,)), Recipe(optimizer="nesterov", lr=0.05, epochs=2, batch_size=64))
    progress, seen, syncs = Tally(), [], []

    def counted(name, real):
        return lambda self, *a, **k: (syncs.append(name) if seen else None) or real(self, *a, **k)

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    real_step = Trainer.step

    def step(self, idx):
        seen.append((progress.epoch, progress.step))  # what a reader sees as this step starts; counting starts
        return real_step(self, idx)

    monkeypatch.setattr(Trainer, "step", step)
    with Fit(config, train, None, torch.device("cpu"), seed=0, tally=progress) as run:
        for _ in run:
            pass
        result = run.result()
    assert seen == [(e, s) for e in (1, 2) for s in range(10)]
    assert syncs == ["item", "item"]  # the loss, once per epoch
    assert (progress.epoch, progress.step, progress.trained_steps) == (2, 10, 20) and result.epochs == 2
    fields = [getattr(progress, f) for f in ("epochs", "steps_per_epoch", "batch", "epoch", "step", "resumed",
                                             "trained_steps", "step_seconds", "started")]
    assert all(type(v) in (int, float) for v in fields), fields  # nothing a reader could sync on
    assert progress.images_per_s() > 0 and progress.seconds_left() == 0


def test_a_step_with_every_augmentation_never_waits_for_the_device(monkeypatch):
    """No number crosses from a tensor to Python inside a step (mixup's and cutmix's draws were
    CPU numbers): on CUDA each would be a host sync, and a CUDA graph could not capture it."""
    trainer = Trainer(dataclasses.replace(HEAVY, arch=Arch((1,), (8,))), synthetic(256, seed=1), CPU)
    idx = next(trainer.batches())
    trainer.step(idx)
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _n=name, _r=real, **k: reads.append(_n) or _r(self, *a, **k))
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    trainer.step(idx)
    assert reads == []
    # and no draw from Python's or numpy's generators, which no device can make
    assert random.getstate() == python_rng and all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_rng))


@pytest.mark.slow
def test_adaptive_clipping_equals_its_definition_in_a_fixed_few_operations():
    """ResNet-24's clipping was 847 operations a step tensor by tensor, 259 grouped by shape;
    weights and grads concatenated per row shape (8 here), it is at most 60."""
    trainer = Trainer(HEAVY, synthetic(256, seed=1), CPU)
    trainer.step(next(trainer.batches()))
    params = list(trainer.model.parameters())
    for p in params:  # grads that span both sides of the clip
        p.grad = torch.randn_like(p) * torch.rand(()) * 0.1
    expected = _clipped_one_tensor_at_a_time(params, HEAVY.recipe.agc_clip)
    before = [p.grad.clone() for p in params]
    trainer.clip()
    kept = torch.cat([(b == p.grad).flatten() for b, p in zip(before, params)]).float().mean()
    for want, p in zip(expected, params):
        torch.testing.assert_close(p.grad, want, rtol=1e-6, atol=1e-9)
    assert 0 < kept < 1  # some units were clipped, some not: both sides ran
    assert opcount.count(trainer.clip) <= 60


def test_a_tiny_net_learns_synthetic_data_in_one_epoch(splits):
    config = Config(Arch((1, 1), (16, 32)), Recipe(optimizer="nesterov", lr=0.05, epochs=1, batch_size=64))
    with Fit(config, *splits, CPU, seed=0) as run:
        seen = [(e.number, e.val_accuracy) for e in run]
        result = run.result()
    assert result.val_accuracy > 0.3, result  # chance is 0.1
    assert seen == [(1, result.val_accuracy)] and result.epochs == 1 and not result.diverged
    assert result.images_per_s > 0 and result.train_seconds > 0


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


@pytest.mark.slow
def test_cpu_runs_are_reproducible_with_a_seed(splits):
    config = Config(Arch((1,), (8,)), Recipe(lr=0.05, epochs=1, batch_size=128, augment=Augment(crop_padding=2, flip=True)))
    assert fit(config, *splits, CPU, seed=3).val_accuracy == fit(config, *splits, CPU, seed=3).val_accuracy


@pytest.mark.slow
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
    from cerberus.fit import evaluate

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


def test_test_time_views_are_weighted_as_airbench_weighs_them():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    x = torch.randn(5, 3, 8, 8)
    model(x)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :8, :8], padded[..., 2:, 2:]
    both = lambda v: model(v) + model(v.flip(3))  # noqa: E731
    with torch.no_grad():
        assert torch.allclose(tta_logits(model, x, False, False), model(x))
        assert torch.allclose(tta_logits(model, x, True, False), both(x))
        assert torch.allclose(tta_logits(model, x, True, True), 0.5 * both(x) + 0.25 * (both(up_left) + both(down_right)), atol=1e-5)
        assert torch.allclose(tta_logits(model, x, False, True), 0.5 * model(x) + 0.25 * (model(up_left) + model(down_right)), atol=1e-5)


def test_a_budget_sets_the_steps_and_the_training_flops_are_counted_exactly():
    """A 1e-5 PFLOP budget on a small net: its steps from the closed form, a short last epoch, and
    training FLOPs that FlopCounterMode counts on the real steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from cerberus import size

    config = Config(Arch((1, 1), (8, 16)), Recipe(budget=1e-5, batch_size=64))
    per_step = size.train_flops(config.arch) * 64
    plan = size.plan(config, 600)
    assert plan.steps == int(1e-5 * 1e15 // per_step) == 11 and plan.steps_per_epoch == 9
    assert plan.epochs == -(-plan.steps // 9) and plan.flops == plan.steps * per_step
    train = synthetic(600, seed=0)
    with FlopCounterMode(display=False) as counter, Fit(config, train, None, CPU, seed=0) as run:
        epochs = list(run)
        result = run.result()
    assert len(epochs) == plan.epochs and result.train_flops == plan.flops
    assert counter.get_total_flops() == plan.flops  # every conv and linear of every step's forward and backward
