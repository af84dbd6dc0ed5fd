"""How many aten operations a piece of code dispatches: the count ``bench`` reports per step.

Every operation the dispatcher runs under :func:`count` is one (forward, backward, the
optimizer's foreach kernels, the schedule's arithmetic on tensors): on a GPU, roughly one kernel
launch each, so it is the host work a CUDA graph or a fused kernel saves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def count(fn: Callable[[], Any]) -> int:
    """The aten operations ``fn()`` dispatches (in this thread, which on the CPU runs backward too)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            _Counter.n += 1
            return func(*args, **(kwargs or {}))

    with _Counter():
        fn()
    return _Counter.n
