"""The training step as a GPU would run it, checked where it shows on the CPU: what each worker
is given, the checkpoint policy, host syncs and operation counts, Adadelta with one-cycle."""

import dataclasses
import json
import random

import numpy as np
import optuna
import pytest
import torch

from cerberus import checkpoint as checkpoints
from cerberus import loop as searches
from cerberus import opcount
from cerberus import space as spaces
from cerberus import study as studies
from cerberus import workers as pool
from cerberus.config import COURSE, Arch, Augment, Config, Recipe
from cerberus.data import synthetic
from cerberus.progress import Reporter
from cerberus.train import Trainer
from conftest import run_cli, tiny_splits

CPU = torch.device("cpu")
HEAVY = Config(COURSE.arch, dataclasses.replace(COURSE.recipe, optimizer="adadelta_agc", lr=1.0, augment=Augment(
    crop_padding=4, flip=True, trivial_augment=True, mixup_alpha=0.2, cutmix_alpha=1.0)))


def test_each_gpu_worker_sees_only_its_gpu_and_the_workers_share_the_cores():
    job = pool.Job("s", "sqlite:///s.db", 10, searches.RunOptions(trials=5, compile=True), 0)
    jobs = [pool.for_device(dataclasses.replace(job, index=i), f"cuda:{g}") for i, g in enumerate((0, 0, 1, 1))]
    envs = [pool.environment(j, jobs, {"PATH": "/bin"}, cores=16) for j in jobs]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "0", "1", "1"]
    assert all(e["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and e["TORCHINDUCTOR_COMPILE_THREADS"] == "4" for e in envs)
    assert all(j.options.device == "cuda:0" for j in jobs) and [j.options.gpu for j in jobs] == [0, 0, 1, 1]
    given = [pool.Job.from_json(e[pool.JOB_ENV]) for e in envs]
    assert given == jobs and "OMP_NUM_THREADS" not in envs[0]
    cpu = [pool.for_device(dataclasses.replace(job, index=i, options=searches.RunOptions(trials=5)), "cpu") for i in range(4)]
    cpu_envs = [pool.environment(j, cpu, {}, cores=16) for j in cpu]
    assert all(e["OMP_NUM_THREADS"] == "4" and "CUDA_VISIBLE_DEVICES" not in e for e in cpu_envs)


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


def test_checkpoints_skip_the_last_epoch_and_wait_their_interval(tmp_path, saves):
    trial = _run(tmp_path, every=0, gpu=3)
    assert saves == [1, 2] and trial.user_attrs["gpu"] == 3  # never the last epoch's
    saves.clear()
    _run(tmp_path / "b", every=3600)
    assert saves == []  # the interval has not passed: nothing stalls the step


class _CutAt:
    """A pruner that cuts every trial at epoch ``n``."""

    def __init__(self, n):
        self.n = n

    def prune(self, study, trial):
        return max(trial.intermediate_values, default=0) >= self.n


def test_a_pruned_epoch_is_not_saved(tmp_path, saves):
    trial = _run(tmp_path, every=0, epochs=4, pruner=_CutAt(2))
    assert trial.user_attrs["reason"] == "pruned" and saves == [1]


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


def test_bench_counts_the_operations_of_the_step_it_timed(tmp_path, capsys):
    config = tmp_path / "heavy.json"
    config.write_text(HEAVY.to_json())
    assert run_cli("bench", "--config", str(config), "--steps", "1", "--warmup", "1", "--device", "cpu", "--json") == 0
    heavy = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert run_cli("bench", "--config", "seed", "--steps", "1", "--warmup", "1", "--device", "cpu", "--json") == 0
    course = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert heavy["config"]["recipe"]["optimizer"] == "adadelta_agc" and Config.from_dict(course["config"]) == COURSE
    assert course["aten_ops_per_step"] <= 803  # no higher than before
    assert heavy["aten_ops_per_step"] <= 1_200  # 2,611 before: per-tensor clipping and Adadelta, TrivialAugment per group


@pytest.mark.parametrize("optimizer", ["adadelta", "adadelta_agc"])
def test_adadelta_trains_with_the_one_cycle_schedule(optimizer):
    config = Config(Arch((1,), (4,)), Recipe(optimizer=optimizer, lr=1.0, schedule="onecycle", epochs=1, batch_size=64))
    trainer = Trainer(config, synthetic(128, seed=1), CPU)  # raised ValueError: no momentum to cycle
    assert torch.isfinite(trainer.step(next(trainer.batches())))
