"""Train one Config on tensors and score it, knowing nothing of Optuna.

``fit(config, train, val, device, on_epoch)`` trains ``ResNet(config.arch)`` with
``config.recipe`` and calls ``on_epoch(epoch, val_accuracy)`` after every epoch (epochs count
from 1); when that returns True the run stops there, which is how a pruner cuts a trial.
A loss that turns NaN or infinite also stops the run, with ``diverged`` set. With ``val=None``
nothing is evaluated during training (the final retraining on train + validation), and
``on_end(trainer)`` is how a caller scores or saves the trained model before it is freed.
``progress`` (a :class:`Progress`) is where the loop keeps its epoch, step and timings for other
threads to watch, in plain Python numbers, so watching adds no host sync.

With ``checkpoint`` (a file path), the state after every epoch (weights, optimizer, schedule,
random generators, validation history) is written there atomically, and a fit that finds the
file resumes after its last epoch: it first replays ``on_epoch`` for the restored epochs, so a
fresh Optuna trial sees the whole curve, then trains the rest. Deleting the file is the caller's.

The training step lives in :class:`Trainer`, which ``fit`` and ``cerberus.bench`` both drive,
so the benchmark times exactly the step a trial runs. Both splits move to the device once (as
uint8); batches are sliced, normalised and augmented there in a few batched operations. The
step computes in ``precision`` (:mod:`cerberus.precision`; by default bf16 autocast with
channels-last memory on CUDA and on a CPU with native bf16, fp32 elsewhere); CUDA adds cudnn
autotuning and fused optimizers. The loss is summed on the device and read
once per epoch, so the epoch has no host sync. ``compile=True`` runs the training forward
through ``torch.compile``.

Nothing of a fit outlives it: the model, optimizer and device splits are unreachable when
``fit`` returns, and it collects them (and empties the CUDA cache) before it does.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cerberus import augment
from cerberus.config import EVAL_BATCH, NUM_CLASSES, Config, Recipe
from cerberus.data import Split
from cerberus.model import ResNet
from cerberus.precision import Precision, choose



@dataclass(frozen=True)
class Result:
    val_accuracy: float  # after the last epoch run (0.0 without a validation split)
    epochs: int  # epochs run
    train_seconds: float  # wall time of the whole fit, evaluation included
    images_per_s: float  # training images per second of training steps
    step_seconds: float = 0.0  # the training steps alone (no evaluation, no set-up)
    history: list[float] = field(default_factory=list)  # validation accuracy per epoch
    # wall time since the fit began at the end of each epoch it trained (restored ones have none), its evaluation included
    epoch_seconds: list[float] = field(default_factory=list)
    stopped: bool = False  # on_epoch asked to stop
    diverged: bool = False  # the loss became NaN or infinite
    resumed_epochs: int = 0  # epochs restored from a checkpoint rather than trained here


def _ignore(progress: Progress) -> None:
    pass


@dataclass
class Progress:
    """Where a fit is, for other threads to read while it trains (a live line, a log timer).

    ``fit`` writes it from its own loop with Python integers and ``time.perf_counter()`` only,
    never from a device tensor, so reading it adds no host sync to a CUDA step. On CUDA the host
    runs a few steps ahead of the device (kernel launches queue), so ``step`` counts steps
    launched; the epoch's one sync (its loss read) brings the two together at every epoch end.
    Fields are written one at a time and read without a lock: each is current or a moment old,
    so a reader may briefly pair a new epoch with the last step of the one before.

    ``epoch`` is the running epoch (1-based), or the last one after it ended; ``step`` counts
    the steps launched in it. ``on_epoch_end`` is called by the training thread after each
    epoch's steps (before any evaluation): how a caller with no validation split sees epochs.
    """

    epochs: int = 0  # epochs the fit runs in all, restored ones included
    steps_per_epoch: int = 0
    batch: int = 0  # images per step
    epoch: int = 0
    step: int = 0
    resumed: int = 0  # epochs restored from a checkpoint, not trained by this fit
    trained_steps: int = 0  # steps launched by this fit, every epoch
    step_seconds: float = 0.0  # this fit's training steps in the epochs it finished
    started: float | None = None  # perf_counter when this fit's first epoch started
    epoch_started: float | None = None  # perf_counter when the running epoch started; None between epochs
    on_epoch_end: Callable[[Progress], None] = field(default=_ignore, repr=False, compare=False)

    def images_per_s(self, now: float | None = None) -> float | None:
        """Training images per second of this fit's steps (evaluation excluded); None before any step."""
        now = time.perf_counter() if now is None else now
        seconds = self.step_seconds + (now - self.epoch_started if self.epoch_started is not None else 0.0)
        return self.trained_steps * self.batch / seconds if self.trained_steps and seconds > 0 else None

    def seconds_left(self, now: float | None = None) -> float | None:
        """The fit's remaining steps at its wall time per step so far (set-up excluded,
        evaluations included once one has run); None before any step."""
        if not self.trained_steps or self.started is None:
            return None
        now = time.perf_counter() if now is None else now
        left = (self.epochs - self.epoch) * self.steps_per_epoch + max(self.steps_per_epoch - self.step, 0)
        return left * (now - self.started) / self.trained_steps


class Trainer:
    """A fresh ``ResNet(config.arch)``, its optimizer and schedule, and ``train`` on ``device``.

    ``batches()`` yields the indices of one epoch's full batches in random order (the ragged
    last batch is dropped, as BatchNorm likes); ``step(idx)`` is one optimisation step on the
    images at ``idx`` and returns the loss as a device tensor, so reading it is a host sync the
    caller decides on. The schedule spans ``total_steps`` steps (default: the recipe's epochs).
    """

    def __init__(self, config: Config, train: Split, device: torch.device,
                 total_steps: int | None = None, compile: bool = False, precision: Precision | None = None) -> None:
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True
        self.recipe = config.recipe
        self.precision = precision or choose(device)
        self.model = ResNet(config.arch).to(device, memory_format=self.precision.memory_format)
        # Only the training forward is compiled: evaluation (other mode, other batch sizes)
        # would recompile, and it is a small share of a trial.
        self.forward = torch.compile(self.model) if compile else self.model
        self.train = train.to(device)
        self.mean, self.std = _stats(self.train.images)
        self.batch = min(self.recipe.batch_size, len(train))
        self.steps_per_epoch = len(train) // self.batch
        self.optimizer = _optimizer(self.model, self.recipe, fused=cuda)
        total = self.steps_per_epoch * self.recipe.epochs if total_steps is None else total_steps
        self.scheduler = _scheduler(self.optimizer, self.recipe, total)
        self.eye = torch.eye(NUM_CLASSES, device=device)

    def batches(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self.train), device=self.train.labels.device)
        for s in range(self.steps_per_epoch):
            yield order[s * self.batch : (s + 1) * self.batch]

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        recipe, train = self.recipe, self.train
        x, y = augment.apply(train.images[idx].float() / 255, self.eye[train.labels[idx]], recipe.augment,
                             self.mean, self.std)
        with self.precision.autocast():
            logits = self.forward(x.contiguous(memory_format=self.precision.memory_format))
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.optimizer == "adadelta_agc":
            _clip_unitwise(self.model, recipe.agc_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def evaluate(self, split: Split) -> float:
        """Accuracy on ``split`` (moved to the device here), with the recipe's flip TTA."""
        return evaluate(self.model, split.to(self.eye.device), self.mean, self.std, self.precision, self.recipe.tta_flip)


def fit(
    config: Config,
    train: Split,
    val: Split | None,
    device: torch.device,
    on_epoch: Callable[[int, float], bool] | None = None,
    seed: int | None = None,
    checkpoint: Path | None = None,
    compile: bool = False,
    on_end: Callable[[Trainer], None] | None = None,
    progress: Progress | None = None,
    precision: Precision | None = None,
) -> Result:
    """See the module docstring. ``progress``, when given, is kept up to date while training
    (see :class:`Progress`); by default a private one nobody reads. ``precision`` defaults to
    ``cerberus.precision.choose(device)``."""
    try:
        return _fit(config, train, val, device, on_epoch, seed, checkpoint, compile, on_end,
                    Progress() if progress is None else progress, precision or choose(device))
    finally:
        release(device, compiled=compile)


def release(device: torch.device, compiled: bool = False) -> None:
    """Free what a finished training run left: cycles, compiled graphs, cached CUDA blocks.

    Dynamo keeps every graph it compiled (and the modules they guard on) and stops compiling a
    function after a few recompilations, so a search that compiles each trial resets it.
    """
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fit(config: Config, train: Split, val: Split | None, device: torch.device,
         on_epoch: Callable[[int, float], bool] | None, seed: int | None, checkpoint: Path | None,
         compile: bool, on_end: Callable[[Trainer], None] | None, progress: Progress, precision: Precision) -> Result:
    if seed is not None:
        torch.manual_seed(seed)
    trainer = Trainer(config, train, device, compile=compile, precision=precision)
    recipe = config.recipe
    if val is not None:
        val = val.to(device)

    start = time.perf_counter()
    step_seconds, history, epochs, clock = 0.0, [], 0, []
    result = dict(stopped=False, diverged=False, resumed_epochs=0)
    if checkpoint is not None and checkpoint.exists():
        step_seconds, history = _restore(checkpoint, trainer)
        epochs = result["resumed_epochs"] = len(history)
    progress.epochs, progress.steps_per_epoch, progress.batch = recipe.epochs, trainer.steps_per_epoch, trainer.batch
    progress.epoch = progress.resumed = epochs  # set before the replay, so its listeners know what was restored
    progress.step = trainer.steps_per_epoch if epochs else 0
    if on_epoch is not None and any(on_epoch(e, a) for e, a in enumerate(history, 1)):
        result["stopped"] = True
    while epochs < recipe.epochs and not result["stopped"]:
        trainer.model.train()
        t0 = time.perf_counter()
        progress.started = t0 if progress.started is None else progress.started
        progress.step, progress.epoch_started, progress.epoch = 0, t0, epochs + 1
        loss_sum = torch.zeros((), device=device)
        for idx in trainer.batches():
            loss_sum += trainer.step(idx)
            progress.step += 1  # host-side counters only: reading them never waits for the device
            progress.trained_steps += 1
        if not math.isfinite(loss_sum.item()):  # the one sync of the epoch
            result["diverged"] = True
            break
        seconds = time.perf_counter() - t0
        step_seconds += seconds
        progress.step_seconds, progress.epoch_started = progress.step_seconds + seconds, None
        progress.on_epoch_end(progress)
        epochs += 1
        if val is None:
            continue
        history.append(trainer.evaluate(val))
        clock.append(time.perf_counter() - start)
        if checkpoint is not None:
            _save(checkpoint, trainer, step_seconds, history)
        if on_epoch is not None and on_epoch(epochs, history[-1]):
            result["stopped"] = True
    if on_end is not None and not result["diverged"]:
        on_end(trainer)
    images = epochs * trainer.steps_per_epoch * trainer.batch  # step_seconds holds restored epochs too
    return Result(
        val_accuracy=history[-1] if history else 0.0,
        epochs=epochs,
        train_seconds=time.perf_counter() - start,
        images_per_s=images / step_seconds if step_seconds else 0.0,
        step_seconds=step_seconds,
        history=history,
        epoch_seconds=clock,
        **result,
    )


def _save(path: Path, trainer: Trainer, step_seconds: float, history: list[float]) -> None:
    state = {
        "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(), "history": history, "step_seconds": step_seconds,
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint whole


def _restore(path: Path, trainer: Trainer) -> tuple[float, list[float]]:
    state = torch.load(path, map_location=trainer.eye.device, weights_only=False)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["cpu_rng"].cpu())
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return state["step_seconds"], list(state["history"])


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, mean: torch.Tensor, std: torch.Tensor,
             precision: Precision | None = None, tta_flip: bool = False) -> float:
    """Accuracy of ``model`` on ``split`` in large batches, in ``precision`` (by default the
    one :func:`cerberus.precision.choose` picks for the split's device); with ``tta_flip`` each
    image is scored by the sum of the logits of it and its mirror image."""
    model.eval()
    device = split.images.device
    precision = precision or choose(device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for i in range(0, len(split), EVAL_BATCH):
        x = ((split.images[i : i + EVAL_BATCH].float() / 255) - mean) / std
        x = x.contiguous(memory_format=precision.memory_format)
        with precision.autocast():
            logits = model(x).float()
            if tta_flip:
                logits += model(x.flip(3)).float()
        correct += (logits.argmax(1) == split.labels[i : i + EVAL_BATCH]).sum()
    return correct.item() / len(split)


def _stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of a uint8 split, in [0, 1] units, shaped to broadcast."""
    x = images.float().div_(255)
    return x.mean((0, 2, 3)).view(1, 3, 1, 1), x.std((0, 2, 3)).view(1, 3, 1, 1)


def _optimizer(model: torch.nn.Module, r: Recipe, fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimizer; ``fused`` (set on CUDA) picks the fused kernels where torch has
    them (SGD, Adam, AdamW) and the multi-tensor ones elsewhere (Adadelta)."""
    params = model.parameters()
    kernels = dict(fused=True) if fused else {}
    if r.optimizer in ("sgd", "nesterov"):
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay,
                               nesterov=r.optimizer == "nesterov" and r.momentum > 0, **kernels)
    if r.optimizer == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay, **kernels)
    if r.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay, **kernels)
    # adadelta, adadelta_agc: torch has no fused Adadelta
    return torch.optim.Adadelta(params, lr=r.lr, weight_decay=r.weight_decay, foreach=True if fused else None)


def _scheduler(optimizer: torch.optim.Optimizer, r: Recipe, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch, so short and long trials follow the same curve. ``r.warmup``
    (a fraction of the steps) ramps cosine and step schedules up linearly from zero first;
    one-cycle has its own warm-up and ignores it."""
    if r.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=r.lr, total_steps=max(total_steps, 2))
    warm = r.warmup * total_steps
    if r.schedule == "step":
        marks = [m * total_steps for m in r.milestones]
        decay = lambda t: 0.1 ** sum(t >= m for m in marks)  # noqa: E731
    else:
        decay = lambda t: 0.5 * (1 + math.cos(math.pi * min((t - warm) / max(total_steps - warm, 1), 1)))  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / warm) if t < warm else decay(t))


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
