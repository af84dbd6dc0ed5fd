"""Optimizers and learning-rate schedules by name: the registries a recipe's ``optimizer`` and
``schedule`` choose from.

Each entry says what it is (``doc``), which recipe fields it reads (``reads``: those fields act
only under it, see :class:`cerberus.knobs.ReadBy`) and how to build it. An optimizer also says
how many copies of the parameters its state holds, which the memory estimate counts. A name
not in a registry is refused when the recipe is made, so nothing downstream guesses.

Builders import torch when called: the registries themselves are read by ``count`` and the
space-file parser, which never load it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from cerberus.config import Recipe


@dataclass(frozen=True)
class Optimizer:
    doc: str
    reads: tuple[str, ...]
    state_copies: Callable[[Recipe], int]  # copies of the parameters its state holds
    build: Callable[[torch.nn.Module, Recipe, bool], list[torch.optim.Optimizer]]  # (model, recipe, on CUDA)
    fused: bool = True  # torch has a fused CUDA kernel for it; else its multi-tensor one runs there too


@dataclass(frozen=True)
class Schedule:
    doc: str
    reads: tuple[str, ...]
    # (optimizer, recipe, total steps) -> a scheduler stepped once per batch
    build: Callable[[torch.optim.Optimizer, Recipe, int], torch.optim.lr_scheduler.LRScheduler]


def _kernels(cuda: bool) -> dict[str, bool]:
    """The fused kernels on CUDA (SGD, Adam, AdamW have them), the multi-tensor (foreach) ones
    elsewhere: a few operations for all parameters instead of a dozen per tensor (Adadelta's
    loop was 1,000 a step for ResNet-24)."""
    return {"fused": True} if cuda else {"foreach": True}


def _groups(model: torch.nn.Module, r: Recipe, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Parameter groups of ``model``'s ``names`` groups (:meth:`cerberus.model.ResNet.parameter_groups`)
    at their learning rates: ``lr`` for the filters, times ``lr_head_scale`` for the head and
    ``lr_bias_scale`` for BatchNorm and the biases. Groups of the same rate are one group."""
    scale = {"filters": 1.0, "head": r.lr_head_scale, "other": r.lr_bias_scale}
    by_lr: dict[float, list[Any]] = {}
    for name, params in model.parameter_groups().items():  # type: ignore[operator]
        if name in names and params:
            by_lr.setdefault(r.lr * scale[name], []).extend(params)
    return [{"params": params, "lr": lr} for lr, params in by_lr.items()]


def _sgd(nesterov: bool) -> Callable[..., list[torch.optim.Optimizer]]:
    def build(model: torch.nn.Module, r: Recipe, cuda: bool) -> list[torch.optim.Optimizer]:
        import torch

        return [torch.optim.SGD(_groups(model, r, ("filters", "head", "other")), lr=r.lr, momentum=r.momentum,
                                weight_decay=r.weight_decay, nesterov=nesterov and r.momentum > 0, **_kernels(cuda))]
    return build


def _muon(model: torch.nn.Module, r: Recipe, cuda: bool) -> list[torch.optim.Optimizer]:
    """Muon on the conv filters (:mod:`cerberus.muon`) and Nesterov SGD on the rest, whose
    weight decay is divided by each group's learning rate, as airbench does (``weight_decay=wd/lr``),
    so that every group decays alike whatever its learning rate."""
    import torch

    from cerberus.muon import FilterMuon
    from cerberus.precision import cpu_has_native_bf16

    groups = _groups(model, r, ("head", "other"))
    for g in groups:
        g["weight_decay"] = r.weight_decay / g["lr"]
    filters = FilterMuon(model.parameter_groups()["filters"], lr=r.lr, momentum=r.muon_momentum,  # type: ignore[operator]
                         native_bf16=cuda or cpu_has_native_bf16())
    return [filters, torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=r.momentum > 0, **_kernels(cuda))]


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _adam(model: torch.nn.Module, r: Recipe, cuda: bool) -> list[torch.optim.Optimizer]:
    import torch

    return [torch.optim.Adam(_trainable(model), lr=r.lr, weight_decay=r.weight_decay, **_kernels(cuda))]


def _adamw(model: torch.nn.Module, r: Recipe, cuda: bool) -> list[torch.optim.Optimizer]:
    import torch

    return [torch.optim.AdamW(_trainable(model), lr=r.lr, weight_decay=r.weight_decay, **_kernels(cuda))]


def _adadelta(model: torch.nn.Module, r: Recipe, cuda: bool) -> list[torch.optim.Optimizer]:
    import torch

    return [torch.optim.Adadelta(_trainable(model), lr=r.lr, weight_decay=r.weight_decay, foreach=True)]


def _momentum_copies(r: Recipe) -> int:
    return 1 if r.momentum > 0 else 0  # torch keeps no momentum buffer at 0


SCALES = ("lr_bias_scale", "lr_head_scale")
OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer("SGD with momentum", ("momentum", *SCALES), _momentum_copies, _sgd(False)),
    "nesterov": Optimizer("SGD with Nesterov momentum", ("momentum", *SCALES), _momentum_copies, _sgd(True)),
    "adam": Optimizer("Adam (weight decay as an L2 term)", (), lambda r: 2, _adam),
    "adamw": Optimizer("AdamW (decoupled weight decay)", (), lambda r: 2, _adamw),
    "adadelta": Optimizer("Adadelta", (), lambda r: 2, _adadelta, fused=False),
    "adadelta_agc": Optimizer("Adadelta with adaptive gradient clipping (Brock et al., 2021)", ("agc_clip",),
                              lambda r: 2, _adadelta, fused=False),
    "muon": Optimizer("Muon on the conv filters (torch.optim.Muon, each filter bank a matrix; Keller Jordan), "
                      "Nesterov SGD on the rest", ("momentum", "muon_momentum", *SCALES), lambda r: 1, _muon),
}


def _warm(r: Recipe, total: int, decay: Callable[[float], float]) -> Callable[[int], float]:
    """``decay(step)`` after a linear ramp from zero over ``r.warmup`` of the ``total`` steps."""
    warm = r.warmup * total
    return lambda t: min(1.0, (t + 1) / warm) if t < warm else decay(t)


def _cosine(optimizer: torch.optim.Optimizer, r: Recipe, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    import torch

    warm = r.warmup * total
    cosine = lambda t: 0.5 * (1 + math.cos(math.pi * min((t - warm) / max(total - warm, 1), 1)))  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _warm(r, total, cosine))


def _step(optimizer: torch.optim.Optimizer, r: Recipe, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    import torch

    marks = [m * total for m in r.milestones]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _warm(r, total, lambda t: 0.1 ** sum(t >= m for m in marks)))


def _onecycle(optimizer: torch.optim.Optimizer, r: Recipe, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    import torch

    # Momentum cycles only where the optimizer has one (Adadelta has none).
    cycles = "momentum" in optimizer.defaults or "betas" in optimizer.defaults
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                               total_steps=max(total, 2), cycle_momentum=cycles)


def _linear(optimizer: torch.optim.Optimizer, r: Recipe, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    import torch

    warm = r.warmup * total
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _warm(r, total, lambda t: max(total - t, 0) / max(total - warm, 1)))


SCHEDULES: dict[str, Schedule] = {
    "cosine": Schedule("cosine decay to zero, after a linear warm-up", ("warmup",), _cosine),
    "step": Schedule("10x drops at the milestones, after a linear warm-up", ("milestones", "warmup"), _step),
    "onecycle": Schedule("torch's OneCycleLR (its own warm-up; momentum cycles where there is one)", (), _onecycle),
    "linear": Schedule("linear decay to near zero at the last step, after a linear warm-up (airbench)", ("warmup",),
                       _linear),
}


class Average:
    """An exponential moving average of a model's weights and BatchNorm statistics
    (``recipe.ema``), updated after every step: ``torch.optim.swa_utils.AveragedModel`` with a
    decay that starts low, ``min(decay, (1 + t) / (10 + t))`` at update t (as TensorFlow's
    ExponentialMovingAverage does with ``num_updates``), so the first steps' weights do not
    weigh on the average for long. The count is kept on the host: no host sync."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel

        self.decay, self.updates = decay, 0
        self.averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=True)
        self.model = model

    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _: torch.Tensor) -> None:
        import torch

        if not averaged[0].is_floating_point():  # BatchNorm's batch counters: the model's own
            torch._foreach_copy_(averaged, current)
            return
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(averaged, current, 1 - decay)

    def update(self) -> None:
        self.updates += 1
        self.averaged.update_parameters(self.model)

    @property
    def evaluated(self) -> torch.nn.Module:
        return self.averaged.module

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.updates = int(state["updates"])


class NoAverage:
    """The null object of :class:`Average` (``ema`` 0): the model is what is evaluated."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.evaluated = model

    def update(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Updates:
    """A model's optimizers (most recipes have one), their schedules and the average of its
    weights, stepped together; the schedules span ``total_steps`` steps, each stepped once per
    batch, so short and long fits follow the same curve. :attr:`evaluated` is the model to
    score and save: the average where the recipe keeps one."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe, total_steps: int, cuda: bool) -> None:
        self.optimizers = OPTIMIZERS[recipe.optimizer].build(model, recipe, cuda)
        schedule = SCHEDULES[recipe.schedule]
        self.schedulers = [schedule.build(o, recipe, total_steps) for o in self.optimizers]
        self.average = Average(model, recipe.ema) if recipe.ema > 0 else NoAverage(model)

    @property
    def evaluated(self) -> torch.nn.Module:
        return self.average.evaluated

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()
        for scheduler in self.schedulers:
            scheduler.step()
        self.average.update()

    def lrs(self) -> list[float]:
        """The learning rate of every parameter group, in order."""
        return [g["lr"] for o in self.optimizers for g in o.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers], "average": self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(f"the state holds {len(state['optimizers'])} optimizer(s), this recipe has {len(self.optimizers)}")
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sched, s in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(s)
        self.average.load_state_dict(state["average"])
