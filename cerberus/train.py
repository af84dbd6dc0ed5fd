"""Train one Config on tensors and score it, knowing nothing of Optuna.

``fit(config, train, val, device, on_epoch)`` trains ``ResNet(config.arch)`` with
``config.recipe`` and calls ``on_epoch(epoch, val_accuracy)`` after every epoch (epochs count
from 1); when that returns True the run stops there, which is how a pruner cuts a trial.
A loss that turns NaN or infinite also stops the run, with ``diverged`` set.

With ``checkpoint`` (a file path), the state after every epoch (weights, optimizer, schedule,
random generators, validation history) is written there atomically, and a fit that finds the
file resumes after its last epoch: it first replays ``on_epoch`` for the restored epochs, so a
fresh Optuna trial sees the whole curve, then trains the rest. Deleting the file is the caller's.

Both splits move to the device once; batches are sliced, normalised and augmented there.
On CUDA the step runs under bf16 autocast with channels-last memory; on the CPU in fp32.
The loss is summed on the device and read once per epoch, so the epoch has no host sync.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cerberus import augment
from cerberus.config import Config, Recipe
from cerberus.data import Split
from cerberus.model import NUM_CLASSES, ResNet

EVAL_BATCH = 1024


@dataclass(frozen=True)
class Result:
    val_accuracy: float  # after the last epoch run
    epochs: int  # epochs run
    train_seconds: float  # wall time of the whole fit, evaluation included
    images_per_s: float  # training images per second of training steps
    history: list[float] = field(default_factory=list)  # validation accuracy per epoch
    stopped: bool = False  # on_epoch asked to stop
    diverged: bool = False  # the loss became NaN or infinite
    resumed_epochs: int = 0  # epochs restored from a checkpoint rather than trained here


def fit(
    config: Config,
    train: Split,
    val: Split,
    device: torch.device,
    on_epoch: Callable[[int, float], bool] | None = None,
    seed: int | None = None,
    checkpoint: Path | None = None,
) -> Result:
    if seed is not None:
        torch.manual_seed(seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    recipe = config.recipe
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model = ResNet(config.arch).to(device, memory_format=memory_format)
    train, val = train.to(device), val.to(device)
    mean, std = _stats(train.images)

    batch = min(recipe.batch_size, len(train))
    steps_per_epoch = len(train) // batch  # the ragged last batch is dropped, as BatchNorm likes
    optimizer = _optimizer(model, recipe)
    scheduler = _scheduler(optimizer, recipe, steps_per_epoch * recipe.epochs)
    eye = torch.eye(NUM_CLASSES, device=device)

    start = time.perf_counter()
    step_seconds, history = 0.0, []
    result = dict(stopped=False, diverged=False, resumed_epochs=0)
    if checkpoint is not None and checkpoint.exists():
        step_seconds, history = _restore(checkpoint, model, optimizer, scheduler)
        result["resumed_epochs"] = len(history)
        if on_epoch is not None and any(on_epoch(e, a) for e, a in enumerate(history, 1)):
            result["stopped"] = True
    for epoch in range(len(history) + 1, recipe.epochs + 1):
        if result["stopped"]:
            break
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(len(train), device=device)
        for s in range(steps_per_epoch):
            idx = order[s * batch : (s + 1) * batch]
            x = ((train.images[idx].float() / 255) - mean) / std
            x, y = augment.apply(x, eye[train.labels[idx]], recipe.augment)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(x.contiguous(memory_format=memory_format))
                loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.optimizer == "adadelta_agc":
                _clip_unitwise(model, recipe.agc_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
        if not math.isfinite(loss_sum.item()):  # the one sync of the epoch
            result["diverged"] = True
            break
        step_seconds += time.perf_counter() - t0
        history.append(evaluate(model, val, mean, std, memory_format))
        if checkpoint is not None:
            _save(checkpoint, model, optimizer, scheduler, step_seconds, history)
        if on_epoch is not None and on_epoch(epoch, history[-1]):
            result["stopped"] = True
            break
    return Result(
        val_accuracy=history[-1] if history else 0.0,
        epochs=len(history),
        train_seconds=time.perf_counter() - start,
        images_per_s=len(history) * steps_per_epoch * batch / step_seconds if step_seconds else 0.0,
        history=history,
        **result,
    )


def _save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, step_seconds: float, history: list[float]) -> None:
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "history": history, "step_seconds": step_seconds, "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint whole


def _restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[float, list[float]]:
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["cpu_rng"].cpu())
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return state["step_seconds"], list(state["history"])


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, mean: torch.Tensor, std: torch.Tensor,
             memory_format: torch.memory_format = torch.contiguous_format) -> float:
    model.eval()
    device = split.images.device
    correct = torch.zeros((), device=device, dtype=torch.long)
    for i in range(0, len(split), EVAL_BATCH):
        x = ((split.images[i : i + EVAL_BATCH].float() / 255) - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x.contiguous(memory_format=memory_format))
        correct += (logits.argmax(1) == split.labels[i : i + EVAL_BATCH]).sum()
    return correct.item() / len(split)


def _stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of a uint8 split, in [0, 1] units, shaped to broadcast."""
    x = images.float().div_(255)
    return x.mean((0, 2, 3)).view(1, 3, 1, 1), x.std((0, 2, 3)).view(1, 3, 1, 1)


def _optimizer(model: torch.nn.Module, r: Recipe) -> torch.optim.Optimizer:
    params = model.parameters()
    if r.optimizer in ("sgd", "nesterov"):
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay,
                               nesterov=r.optimizer == "nesterov" and r.momentum > 0)
    if r.optimizer == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
    if r.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.Adadelta(params, lr=r.lr, weight_decay=r.weight_decay)  # adadelta, adadelta_agc


def _scheduler(optimizer: torch.optim.Optimizer, r: Recipe, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch, so short and long trials follow the same curve."""
    if r.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=r.lr, total_steps=max(total_steps, 2))
    if r.schedule == "step":
        marks = [m * total_steps for m in r.milestones]
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.1 ** sum(t >= m for m in marks))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t / total_steps, 1))))


@torch.no_grad()
def _clip_unitwise(model: torch.nn.Module, clip: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al., 2021): per output unit, keep ||g|| <= clip * ||w||."""
    for p in model.parameters():
        if p.grad is None:
            continue
        w_norm, g_norm = _unit_norm(p).clamp_min(eps), _unit_norm(p.grad)
        p.grad.mul_(torch.where(g_norm > clip * w_norm, clip * w_norm / g_norm.clamp_min(1e-6), 1.0))


def _unit_norm(t: torch.Tensor) -> torch.Tensor:
    """Norm per output unit (row of a weight); a 1-d tensor (bias, BatchNorm) is one unit per element."""
    if t.ndim <= 1:
        return t.abs()
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)
