"""Muon on convolution filters: ``torch.optim.Muon`` over each filter bank seen as a matrix.

``torch.optim.Muon`` orthogonalises the update of 2-D parameters only. A conv's filter bank
(out, in, k, k) is orthogonalised as the matrix of one row per output channel, as Keller
Jordan's airbench does (github.com/KellerJordan/cifar10-airbench, airbench94_muon.py): the
optimizer is handed 2-D views that share the filters' storage, so its in-place update is the
filters' update, and each step copies the gradients into the same row order first. The order of
a row's columns (in, k, k or k, k, in for a channels-last filter) does not change an
orthogonalised matrix, up to the same order.

Before each step every filter bank is rescaled to a Frobenius norm of sqrt(out), as airbench
does: the BatchNorm after each conv makes the scale of its filters irrelevant to the function,
so fixing it keeps the effective step size the learning rate says, with no weight decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def rows(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``t`` (out, in, k, k) as (out, in * k * k), columns in the memory order of a filter that is
    channels-last or not: a view where the memory allows one (the filter itself), else a copy."""
    if channels_last:
        t = t.permute(0, 2, 3, 1)
    return t.reshape(t.shape[0], -1)


class FilterMuon(torch.optim.Muon):
    """``torch.optim.Muon`` on the filter banks ``filters`` (4-D parameters); see the module docstring."""

    def __init__(self, filters: list[nn.Parameter], lr: float, momentum: float, nesterov: bool = True) -> None:
        self.filters = filters
        self.norms = [math.sqrt(f.shape[0]) for f in filters]
        self.layouts = [f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous() for f in filters]
        views = [nn.Parameter(rows(f.detach(), last)) for f, last in zip(filters, self.layouts)]
        for view, f in zip(views, filters):
            if view.untyped_storage().data_ptr() != f.untyped_storage().data_ptr():
                raise ValueError("a filter bank could not be viewed as a matrix in place")
        super().__init__(views, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0)

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        norms = torch._foreach_norm(self.filters)
        torch._foreach_clamp_min_(norms, 1e-12)
        torch._foreach_div_(self.filters, norms)
        torch._foreach_mul_(self.filters, self.norms)
        for view, f, last in zip(self.param_groups[0]["params"], self.filters, self.layouts):
            view.grad = None if f.grad is None else rows(f.grad, last)
        super().step()
