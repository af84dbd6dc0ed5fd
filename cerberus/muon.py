"""Muon on convolution filters: each filter bank's update orthogonalised as a matrix.

Muon (Keller Jordan, 2024; ``torch.optim.Muon``) keeps a momentum of the gradient and steps
along its orthogonalised version, computed by a quintic Newton-Schulz iteration. Filters are 4-D:
a bank (out, in, k, k) is orthogonalised as the matrix of one row per output channel, as
airbench does (github.com/KellerJordan/cifar10-airbench, airbench94_muon.py). Before each step
every bank is rescaled to a Frobenius norm of sqrt(out), as airbench does: the BatchNorm after
each conv makes the scale of its filters irrelevant to the function, so fixing it keeps the
effective step size what the learning rate says, with no weight decay.

``torch.optim.Muon`` takes 2-D parameters only, and always iterates in bf16, which a CPU
without bf16 units (no AVX512-BF16, AMX or Arm bf16) emulates at about 1 GFLOP/s: 4.5 s a step
for airbench's net on such a CPU, three times its forward and backward. So this module runs
torch's update rule itself (its momentum, Nesterov form, iteration, coefficients and learning
rate adjustment), on the 4-D filters directly, iterating in bf16 where the device computes it
natively and in fp32 elsewhere; a test holds it to ``torch.optim.Muon`` step for step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's (Keller Jordan's)
STEPS = 5
EPS = 1e-7


def orthogonalise(g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of ``torch.optim.Muon`` on the matrix ``g``, in ``dtype``."""
    a, b, c = COEFFICIENTS
    x = g.to(dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp_min(EPS)  # spectral norm at most 1
    for _ in range(STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class FilterMuon(torch.optim.Optimizer):
    """Muon on the filter banks ``filters`` (4-D parameters); see the module docstring.
    ``native_bf16``: whether the device computes bf16 natively (the iteration's dtype)."""

    def __init__(self, filters: list[nn.Parameter], lr: float, momentum: float, native_bf16: bool,
                 nesterov: bool = True) -> None:
        super().__init__(filters, {"lr": lr, "momentum": momentum, "nesterov": nesterov})
        self.dtype = torch.bfloat16 if native_bf16 else torch.float32

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            filters = [p for p in group["params"] if p.grad is not None]
            norms = torch._foreach_norm(filters)
            torch._foreach_clamp_min_(norms, 1e-12)
            torch._foreach_div_(filters, norms)
            torch._foreach_mul_(filters, [math.sqrt(p.shape[0]) for p in filters])
            for p in filters:
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
                rows = g.reshape(g.shape[0], -1)
                update = orthogonalise(rows, self.dtype).to(p.dtype).view_as(g)
                adjusted = group["lr"] * math.sqrt(max(1.0, rows.shape[0] / rows.shape[1]))  # torch's "original"
                p.add_(update, alpha=-adjusted)
