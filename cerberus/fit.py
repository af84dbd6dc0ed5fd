"""Train one Config on tensors and score it, knowing nothing of Optuna.

:class:`Fit` is an iterator of epochs that the caller's loop owns: ``with Fit(config, train,
val, device) as fit: for epoch in fit: ...`` trains ``ResNet(config.arch)`` with
``config.recipe``, one :class:`Epoch` (its validation accuracy, its wall time) per step of the
loop. The caller prunes by leaving the loop, scores or saves the model (``fit.trainer``) inside
it or after it, and reads the summary from :meth:`Fit.result`. A loss that turns NaN or
infinite ends the iteration with an epoch marked ``diverged``. With ``val=None`` nothing is
evaluated (the final retraining on train + validation) and each epoch's accuracy is None.

:meth:`Fit.state` is everything a checkpoint needs (weights, optimizer, schedule, the random
generators of the CPU and of the fit's own device, the validation history) in tensors and
plain numbers; :meth:`Fit.restore` takes it back before the loop, whose first epochs are then
the restored ones (``restored=True``, not trained again), so a fresh Optuna trial sees the
whole curve. Where the state is kept is the caller's (:mod:`cerberus.checkpoint`).

``tally`` (a :class:`Tally`) is where the loop keeps its epoch, step and timings for
other threads to watch, in plain Python numbers, so watching adds no host sync.

The training step lives in :class:`Trainer`, which ``Fit`` and ``cerberus.bench`` both drive,
so the benchmark times exactly the step a trial runs. Both splits move to the device once (as
uint8); batches are sliced, normalised and augmented there in a few batched operations. The
step computes in ``precision`` (:mod:`cerberus.precision`; by default bf16 autocast with
channels-last memory on CUDA and on a CPU with native bf16, fp32 elsewhere); CUDA adds cudnn
autotuning and fused optimizers. The loss is summed on the device and read once per epoch, so
the epoch has no host sync. ``compile=True`` runs the training forward through ``torch.compile``;
``cuda_graph=True`` records the step's augmentation, forward, backward and clipping as a CUDA
graph after three eager steps and replays it (:mod:`cerberus.graph`; the optimizer and the
schedule run outside it, so the learning rate can change every step).

Nothing of a fit outlives its ``with`` block: the model, optimizer and device splits are
unreachable after it, and it collects them (and empties the CUDA cache) on the way out.
"""

from __future__ import annotations

import gc
import math
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from cerberus import augment
from cerberus import graph as graphs
from cerberus import size as sizes
from cerberus.config import EVAL_BATCH, NUM_CLASSES, STATS_CHUNK, Config
from cerberus.data import Split
from cerberus.model import WHITEN_IMAGES, ResNet
from cerberus.optim import OPTIMIZERS, Updates
from cerberus.precision import Precision, choose


@dataclass(frozen=True)
class Epoch:
    number: int  # 1-based
    val_accuracy: float | None  # None without a validation split, or when the loss diverged
    seconds: float | None = None  # wall time since the fit began at this epoch's end; None when restored
    restored: bool = False  # read back from a checkpoint, not trained by this fit
    diverged: bool = False  # the loss became NaN or infinite in this epoch: the last one yielded
    progress: float = 0.0  # the share of the fit's steps done at this epoch's end (1.0 after the last)
    of: int = 0  # the epochs the fit plans in all
    probe: bool = False  # val_accuracy is the probe's (a few validation images, one view), not the whole split's


@dataclass(frozen=True)
class Result:
    val_accuracy: float  # after the last epoch run (0.0 without a validation split)
    epochs: int  # epochs run, restored ones included
    train_seconds: float  # wall time of the whole fit, evaluation included
    images_per_s: float  # training images per second of training steps
    step_seconds: float = 0.0  # the training steps alone (no evaluation, no set-up), restored epochs' included
    history: list[float] = field(default_factory=list)  # validation accuracy per epoch
    # wall time since the fit began at the end of each epoch it trained (restored ones have none), its evaluation included
    epoch_seconds: list[float] = field(default_factory=list)
    diverged: bool = False  # the loss became NaN or infinite
    resumed_epochs: int = 0  # epochs restored from a checkpoint rather than trained here
    first_step_seconds: float = 0.0  # the first step this fit ran (autotuning, compilation): not in step_seconds
    captured: bool = False  # its steps replayed a CUDA graph (cuda_graph=True on CUDA, recorded without error)
    train_flops: int = 0  # of the steps run, restored ones included: steps x batch x forward-and-backward FLOPs per image


@dataclass
class Tally:
    """Where a fit is, for other threads to read while it trains (a live line, a log timer).

    ``Fit`` writes it from its own loop with Python integers and ``time.perf_counter()`` only,
    never from a device tensor, so reading it adds no host sync to a CUDA step. On CUDA the host
    runs a few steps ahead of the device (kernel launches queue), so ``step`` counts steps
    launched; the epoch's one sync (its loss read) brings the two together at every epoch end.
    Fields are written one at a time and read without a lock: each is current or a moment old,
    so a reader may briefly pair a new epoch with the last step of the one before.

    ``epoch`` is the running epoch (1-based), or the last one after it ended; ``step`` counts
    the steps launched in it.
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
    """A fresh ``ResNet(config.arch)``, its optimizers and schedules (:class:`cerberus.optim.Updates`),
    and ``train`` on ``device``.

    ``batches()`` yields the indices of one epoch's full batches in random order (the ragged
    last batch is dropped, as BatchNorm likes); ``step(idx)`` is one optimisation step on the
    images at ``idx`` and returns the loss as a device tensor, so reading it is a host sync the
    caller decides on. :attr:`plan` (:func:`cerberus.size.plan`) says how many steps the fit
    takes, the recipe's epochs or its FLOP budget's; the schedule spans them (or ``total_steps``).
    """

    def __init__(self, config: Config, train: Split, device: torch.device, total_steps: int | None = None,
                 compile: bool = False, precision: Precision | None = None, cuda_graph: bool = False) -> None:
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True
        self.recipe = config.recipe
        self.precision = precision or choose(device)
        self.model = ResNet(config.arch).to(device, memory_format=self.precision.memory_format)
        # Only the training forward is compiled: evaluation (other mode, other batch sizes)
        # would recompile, and it is a small share of a trial.
        self.forward = torch.compile(self.model) if compile else self.model
        self.mean, self.std = (t.to(device) for t in _stats(train.images))  # the host split's: once per search
        self.train = train.to(device)
        self.model.whiten(((self.train.images[:WHITEN_IMAGES].float() / 255) - self.mean) / self.std)
        # Alternating flips (airbench): each image has a side drawn once, and every other epoch flips them all.
        aug = self.recipe.augment
        self.sides = torch.rand(len(train), device=device) < 0.5 if aug.flip and aug.alternate_flip else None
        self.odd = torch.zeros((), dtype=torch.bool, device=device)
        self.epoch = 0  # epochs whose batches were drawn
        if self.recipe.batch_size > len(train):
            raise ValueError(f"batch_size {self.recipe.batch_size:,} is larger than the {len(train):,} training images")
        self.batch = self.recipe.batch_size
        self.plan = sizes.plan(config, len(train))
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.updates = Updates(self.model, self.recipe, self.plan.steps if total_steps is None else total_steps, cuda)
        self.eye = torch.eye(NUM_CLASSES, device=device)
        clips = "agc_clip" in OPTIMIZERS[self.recipe.optimizer].reads
        self.clip = Clip(list(self.model.parameters()), self.recipe.agc_clip) if clips else NoClip()
        self.run = graphs.wrap(self._compute, device, cuda_graph)

    def batches(self) -> Iterator[torch.Tensor]:
        """The next epoch's batches: full ones, as many as the plan has left in it (a budget's
        last epoch is short), and a whole epoch's past the plan (``bench`` times any number)."""
        left = self.plan.steps - self.epoch * self.steps_per_epoch
        steps = left if 0 < left < self.steps_per_epoch else self.steps_per_epoch
        self.odd.fill_(self.epoch % 2 == 1)
        self.epoch += 1
        order = torch.randperm(len(self.train), device=self.train.labels.device)
        for s in range(steps):
            yield order[s * self.batch : (s + 1) * self.batch]

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        loss = self.run(idx)  # as it is, or replayed as a CUDA graph (cuda_graph=True on CUDA)
        self.updates.step()  # outside the graph: the schedule changes the learning rate every step
        return loss

    def _compute(self, idx: torch.Tensor) -> torch.Tensor:
        """Augmentation, forward, backward and clipping of one batch: the part of a step with
        fixed shapes and no host read, which a CUDA graph records (:mod:`cerberus.graph`)."""
        recipe, train = self.recipe, self.train
        flips = None if self.sides is None else self.sides[idx] ^ self.odd
        x, y = augment.apply(train.images[idx].float() / 255, self.eye[train.labels[idx]], recipe.augment,
                             self.mean, self.std, flips)
        with self.precision.autocast(cache=False):  # a graph cannot hold autocast's cache of casts
            logits = self.forward(x.contiguous(memory_format=self.precision.memory_format))
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        self.clip()
        return loss.detach()

    @property
    def evaluated(self) -> torch.nn.Module:
        """The model that is scored, timed and saved: the trained net, or its average."""
        return self.updates.evaluated

    def weights(self) -> dict[str, torch.Tensor]:
        """The state dict of :attr:`evaluated`, on the CPU: what a final model saves."""
        return {k: v.detach().cpu() for k, v in self.evaluated.state_dict().items()}

    def evaluate(self, split: Split) -> float:
        """Accuracy of :attr:`evaluated` on ``split`` (moved to the device here), with the recipe's TTA."""
        return evaluate(self.evaluated, split.to(self.eye.device), self.mean, self.std, self.precision,
                        self.recipe.tta_flip, self.recipe.tta_shift)


class Fit:
    """The epochs of one training run, as an iterator; see the module docstring."""

    def __init__(self, config: Config, train: Split, val: Split | None, device: torch.device,
                 seed: int | None = None, compile: bool = False, precision: Precision | None = None,
                 tally: Tally | None = None, cuda_graph: bool = False, probe: int | None = None) -> None:
        if seed is not None:
            torch.manual_seed(seed)
        self.config, self.device, self.compiled = config, device, compile
        self.probe = probe
        self.trainer = Trainer(config, train, device, compile=compile, precision=precision or choose(device),
                               cuda_graph=cuda_graph)
        self.val = None if val is None else val.to(device)
        self.started = time.perf_counter()  # train_seconds counts from here: set-up excluded
        self.tally = Tally() if tally is None else tally
        self.history: list[float] = []  # validation accuracy per epoch, restored ones first
        self.clock: list[float] = []  # Result.epoch_seconds
        self.step_seconds, self.epochs, self.resumed_epochs, self.diverged = 0.0, 0, 0, False
        self.first_step_seconds: float | None = None  # the fit's first step, not in step_seconds
        self._restored: list[float] = []

    def __enter__(self) -> Fit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.trainer = self.val = None  # type: ignore[assignment]
        release(self.device, compiled=self.compiled)

    def state(self) -> dict[str, Any]:
        """The state after the last epoch, in tensors and plain numbers (``torch.load`` with
        ``weights_only=True`` reads it back): what :meth:`restore` needs to go on from there."""
        t = self.trainer
        return {"model": t.model.state_dict(), "updates": t.updates.state_dict(),
                "history": list(self.history), "step_seconds": self.step_seconds, "rng": rng_state(self.device)}

    def restore(self, state: dict[str, Any]) -> None:
        """Go on from ``state`` (:meth:`state` of an earlier fit of the same configuration):
        its epochs come first out of the iterator, marked ``restored``."""
        t = self.trainer
        t.model.load_state_dict(state["model"])
        t.updates.load_state_dict(state["updates"])
        t.epoch = len(state["history"])
        set_rng_state(state["rng"], self.device)
        self.step_seconds, self._restored = float(state["step_seconds"]), [float(a) for a in state["history"]]
        self.epochs = self.resumed_epochs = len(self._restored)
        self.history = list(self._restored)

    def __iter__(self) -> Iterator[Epoch]:
        p = self.tally
        p.epochs, p.steps_per_epoch, p.batch = self.trainer.plan.epochs, self.trainer.steps_per_epoch, self.trainer.batch
        p.epoch = p.resumed = self.resumed_epochs  # set before the restored epochs are yielded
        p.step = self.trainer.steps_per_epoch if self.resumed_epochs else 0
        plan = self.trainer.plan
        for number, accuracy in enumerate(self._restored, 1):
            yield Epoch(number, accuracy, restored=True, progress=self._progress(number), of=plan.epochs,
                        probe=self._probes(number))
        while self.epochs < plan.epochs:
            if not self._train_epoch():
                self.diverged = True
                yield Epoch(self.epochs + 1, None, time.perf_counter() - self.started, diverged=True,
                            progress=self._progress(self.epochs + 1), of=plan.epochs)
                return
            self.epochs += 1
            accuracy = self._score()
            if accuracy is not None:
                self.history.append(accuracy)
            self.clock.append(time.perf_counter() - self.started)
            yield Epoch(self.epochs, accuracy, self.clock[-1], progress=self._progress(self.epochs), of=plan.epochs,
                        probe=self._probes(self.epochs))

    def _progress(self, epoch: int) -> float:
        plan = self.trainer.plan
        return min(epoch * plan.steps_per_epoch, plan.steps) / plan.steps

    def _probes(self, epoch: int) -> bool:
        return self.probe is not None and self.val is not None and epoch < self.trainer.plan.epochs

    def _score(self) -> float | None:
        """The epoch's validation accuracy: of the first ``probe`` images, one view each, before
        the last epoch (a cheap estimate for the pruner, as often as every epoch), and of the
        whole split with the recipe's test-time views after it (the trial's score)."""
        if self.val is None:
            return None
        if self._probes(self.epochs):
            return evaluate(self.trainer.evaluated, self.val.head(self.probe), self.trainer.mean, self.trainer.std,  # type: ignore[arg-type]
                            self.trainer.precision)
        return self.trainer.evaluate(self.val)

    def _train_epoch(self) -> bool:
        """One epoch of steps; whether its loss stayed finite (read once, the epoch's one sync)."""
        p, trainer = self.tally, self.trainer
        trainer.model.train()
        t0 = time.perf_counter()
        p.started = t0 if p.started is None else p.started
        p.step, p.epoch_started, p.epoch = 0, t0, self.epochs + 1
        loss_sum = torch.zeros((), device=self.device)
        first = 0.0
        for idx in trainer.batches():
            loss_sum += trainer.step(idx)
            p.step += 1  # host-side counters only: reading them never waits for the device
            p.trained_steps += 1
            if self.first_step_seconds is None:  # autotuning, compilation, allocation: timed apart
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                first = self.first_step_seconds = time.perf_counter() - t0
        if not math.isfinite(loss_sum.item()):
            return False
        seconds = time.perf_counter() - t0
        self.step_seconds += seconds - first
        p.step_seconds, p.epoch_started = p.step_seconds + seconds, None
        return True

    def result(self) -> Result:
        """What the fit did so far: the epochs it ran (restored ones included) and their timings."""
        plan = self.trainer.plan
        done = min(self.epochs * plan.steps_per_epoch, plan.steps)
        images = (done - (self.first_step_seconds is not None)) * self.tally.batch
        return Result(
            val_accuracy=self.history[-1] if self.history else 0.0, epochs=self.epochs,
            train_seconds=time.perf_counter() - self.started,
            images_per_s=images / self.step_seconds if self.step_seconds else 0.0,
            step_seconds=self.step_seconds, history=list(self.history), epoch_seconds=list(self.clock),
            diverged=self.diverged, resumed_epochs=self.resumed_epochs, first_step_seconds=self.first_step_seconds or 0.0,
            captured=self.trainer.run.captured, train_flops=plan.flops * done // plan.steps)


def fit(config: Config, train: Split, val: Split | None, device: torch.device, seed: int | None = None,
        precision: Precision | None = None) -> Result:
    """Every epoch of ``config`` and nothing else: :class:`Fit` for a caller with no loop of its own."""
    with Fit(config, train, val, device, seed=seed, precision=precision) as run:
        for _ in run:
            pass
        return run.result()


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


def rng_state(device: torch.device) -> dict[str, Any]:
    """The random generators a fit draws from: the CPU's, and its own device's only (a
    checkpoint read on a machine with another number of GPUs restores it to the same place)."""
    own = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "device": own}


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if state.get("device") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["device"].cpu(), device)


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, mean: torch.Tensor, std: torch.Tensor,
             precision: Precision | None = None, tta_flip: bool = False, tta_shift: bool = False) -> float:
    """Accuracy of ``model`` on ``split`` in large batches, in ``precision`` (by default the
    one :func:`cerberus.precision.choose` picks for the split's device), each image scored by
    :func:`tta_logits` of its views."""
    model.eval()
    device = split.images.device
    precision = precision or choose(device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for i in range(0, len(split), EVAL_BATCH):
        x = ((split.images[i : i + EVAL_BATCH].float() / 255) - mean) / std
        x = x.contiguous(memory_format=precision.memory_format)
        with precision.autocast():
            logits = tta_logits(model, x, tta_flip, tta_shift)
        correct += (logits.argmax(1) == split.labels[i : i + EVAL_BATCH]).sum()
    return correct.item() / len(split)


def tta_logits(model: torch.nn.Module, x: torch.Tensor, flip: bool, shift: bool) -> torch.Tensor:
    """The logits that score a batch: the image's own, plus its mirror image's with ``flip``;
    with ``shift``, half that and a quarter each of the same for the image shifted one pixel
    up-left and down-right, its edge reflected (airbench's test-time augmentation)."""
    def views(batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch).float()
        return logits + model(batch.flip(3)).float() if flip else logits

    logits = views(x)
    if shift:
        h, w = x.shape[2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        logits = 0.5 * logits + 0.25 * (views(padded[..., :h, :w]) + views(padded[..., 2:, 2:]))
    return logits


_STATS: dict[int, tuple[weakref.ref, tuple[torch.Tensor, torch.Tensor]]] = {}  # id of a split's images -> its statistics


def _stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (sample) std of a uint8 split, in [0, 1] units, shaped to broadcast,
    on the split's device. Summed in float64 over :data:`cerberus.config.STATS_CHUNK` images
    at a time (two fp32 temporaries of that many images, not a float copy of the whole split),
    and kept per split, so a search's trials on the same split compute them once."""
    known = _STATS.get(id(images))
    if known is not None and known[0]() is images:
        return known[1]
    total = torch.zeros(3, dtype=torch.float64, device=images.device)
    squares = torch.zeros(3, dtype=torch.float64, device=images.device)
    for i in range(0, len(images), STATS_CHUNK):
        x = images[i : i + STATS_CHUNK].float().div_(255)
        total += x.sum((0, 2, 3), dtype=torch.float64)
        squares += x.square().sum((0, 2, 3), dtype=torch.float64)
    n = len(images) * images.shape[2] * images.shape[3]
    mean = total / n
    std = ((squares - n * mean.square()) / (n - 1)).clamp_min(0).sqrt()
    stats = (mean.float().view(1, 3, 1, 1), std.float().view(1, 3, 1, 1))
    _STATS[id(images)] = (weakref.ref(images), stats)
    weakref.finalize(images, _STATS.pop, id(images), None)  # forgotten with the split
    return stats


class Clip:
    """Adaptive gradient clipping (Brock et al., 2021): per output unit (a row of a weight, an
    element of a 1-d parameter), scale the gradient by ``min(1, clip * max(||w||, eps) /
    max(||g||, 1e-6))``.

    A handful of operations for the whole net, whatever its depth: parameters whose rows have
    the same shape are concatenated (weights and grads together) into one tensor per row shape
    (8 in ResNet-24), each gives its unit norms in one reduction, the scales are computed once
    for all units, and one ``_foreach_copy_`` writes every clipped grad back. Every parameter
    must have a grad when it is called (a ResNet uses all of them).
    """

    def __init__(self, params: list[torch.nn.Parameter], clip: float, eps: float = 1e-3) -> None:
        groups: dict[tuple[int, ...], list[torch.nn.Parameter]] = {}
        for p in params:
            groups.setdefault(tuple(p.shape[1:]), []).append(p)
        self.groups = list(groups.values())
        self.params = [p for group in self.groups for p in group]
        self.units = [sum(p.shape[0] for p in group) for group in self.groups]
        device = self.params[0].device
        # the norms of all groups stand in one vector as [w of group 1, g of group 1, w of group 2, ...]
        starts = [2 * sum(self.units[:i]) for i in range(len(self.units))]
        self.w_at = torch.tensor([s + k for s, u in zip(starts, self.units) for k in range(u)], device=device)
        self.g_at = torch.tensor([s + u + k for s, u in zip(starts, self.units) for k in range(u)], device=device)
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def __call__(self) -> None:
        both = [torch.cat([*group, *(p.grad for p in group)]) for group in self.groups]
        norms = torch.cat([t.abs() if t.ndim == 1 else torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)))
                           for t in both])
        scale = (self.clip * norms[self.w_at].clamp_min(self.eps) / norms[self.g_at].clamp_min(1e-6)).clamp_max(1)
        clipped: list[torch.Tensor] = []
        for t, s, units, group in zip(both, scale.split(self.units), self.units, self.groups):
            grads = t[units:] * (s if t.ndim == 1 else s.view(units, *(1,) * (t.ndim - 1)))
            clipped += grads.split([p.shape[0] for p in group])
        torch._foreach_copy_([p.grad for p in self.params], clipped)


class NoClip:
    """The null object of :class:`Clip`: every recipe but ``adadelta_agc``."""

    def __call__(self) -> None:
        pass
