"""Run a fixed-shape training step as one CUDA graph: one launch instead of hundreds.

A ResNet-24 step at batch 128 is about 500 kernels (augmentation, forward, backward,
clipping) that together take under a millisecond on an H200: eager PyTorch cannot launch them
that fast from Python, so the GPU waits on the host. A graph records them once and replays
them with one call.

:class:`Graphed` wraps ``compute(idx) -> loss``: a step whose shapes never change and which
never reads a tensor on the host (:mod:`cerberus.augment` draws everything on the device for
this). Its first :data:`WARMUP` calls run eagerly on a side stream, as PyTorch's graph
documentation asks (cudnn autotuning, lazy initialisation and the allocator settle there); the
next call records ``compute`` into a ``torch.cuda.CUDAGraph`` and replays it, and every later
call copies its indices into the graph's input and replays. What the graph writes (the loss,
the grads) lives in its private memory and is overwritten by the next replay; work queued on
the same stream in between (the caller's optimizer step, a ``+=`` of the loss) reads it in
time.

Recording can fail (an operation that cannot be captured, a driver without graph support):
then one line goes to stderr and every later call runs eagerly. A trial is never lost to a
capture. :class:`Eager` is the null object: ``compute`` as it is, on any device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import torch

WARMUP = 3  # eager steps before recording: PyTorch's examples use 3 (DDP needs 11)

Step = Callable[[torch.Tensor], torch.Tensor]


class Eager:
    """``compute`` run as it is."""

    captured = False

    def __init__(self, compute: Step) -> None:
        self.compute = compute

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.compute(idx)


class Graphed:
    """``compute`` recorded once as a CUDA graph on ``device``, then replayed; see the module docstring."""

    def __init__(self, compute: Step, device: torch.device, warmup: int = WARMUP, out: TextIO | None = None) -> None:
        self.compute, self.device, self.warmup = compute, device, warmup
        self.out = out if out is not None else sys.stderr
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self.idx: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.graph is not None:
            self.idx.copy_(idx)  # type: ignore[union-attr]
            self.graph.replay()
            return self.loss  # type: ignore[return-value]
        if self.failed:
            return self.compute(idx)
        self.calls += 1
        if self.calls <= self.warmup:
            return self._on_side_stream(idx)
        return self._record(idx)

    def _on_side_stream(self, idx: torch.Tensor) -> torch.Tensor:
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            loss = self.compute(idx)
        main.wait_stream(side)
        return loss

    def _record(self, idx: torch.Tensor) -> torch.Tensor:
        self.idx = idx.clone()
        torch.cuda.empty_cache()  # the warm-up's cached blocks go back first: the graph has a pool of its own
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.loss = self.compute(self.idx)
        except Exception as e:  # whatever cannot be captured, the step still runs
            self.failed, self.idx, self.loss = True, None, None
            first = next(iter(str(e).strip().splitlines()), "")
            print(f"note: CUDA graph capture failed ({type(e).__name__}: {first}); this run trains eagerly",
                  file=self.out, flush=True)
            torch.cuda.synchronize(self.device)
            return self.compute(idx)
        self.graph = graph
        graph.replay()
        return self.loss  # type: ignore[return-value]


def wrap(compute: Step, device: torch.device, capture: bool) -> Eager | Graphed:
    """``compute`` as a graph where that is asked for and can exist (a CUDA device), else as it is."""
    return Graphed(compute, device) if capture and device.type == "cuda" else Eager(compute)
