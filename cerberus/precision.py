"""The number format a training step computes in, chosen from what the hardware does natively.

``choose(device, wanted)`` returns a :class:`Precision`: ``bf16`` runs the forward under
``torch.autocast`` in bfloat16 with channels-last activations (the convs and the linear layer
in bf16, and BatchNorm, ReLU, the add and the pool in the bf16 they are given; the loss, the
weights, their gradients and the optimizer state stay fp32), ``fp32`` is
plain fp32 in the default NCHW layout. ``auto``, the default everywhere, is bf16 on CUDA and on
a CPU that computes bf16 in hardware (:func:`cpu_has_native_bf16`), and fp32 on any other CPU,
where oneDNN would only emulate bf16 and run slower than fp32.

The same object serves a trial, ``train``, ``bench`` and the memory estimate, so all four
speak of one step.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a step runs: `count` sizes a net without it
    import torch

PRECISIONS = ("auto", "bf16", "fp32")
# /proc/cpuinfo flags of a CPU with bf16 dot products: x86's AVX512-BF16 and AMX (Sapphire
# Rapids on, Zen 4 on), Arm's FEAT_BF16 (Graviton 3, Neoverse V1 on, Apple M2 on).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16" or "fp32"
    device_type: str  # "cpu" or "cuda"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the convs and the linear layer: what MFU is measured against."""
        import torch

        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def memory_format(self) -> torch.memory_format:
        """oneDNN and cuDNN both run bf16 convs fastest channels-last. In fp32 on a CPU it
        depends on the CPU: NCHW was faster on an AVX-512 Xeon, channels-last 1.12x to 1.5x
        faster on an AVX2-only AMD EPYC (benchmarks/RESULTS.md, "Layout")."""
        import torch

        last = self.name == "bf16" or self.device_type == "cpu" and not cpu_has_avx512()
        return torch.channels_last if last else torch.contiguous_format

    @property
    def activation_bytes(self) -> int:
        """Bytes of one saved map or activation gradient."""
        return 2 if self.name == "bf16" else 4

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """``cache=False`` casts a weight at each use instead of once per context: what a CUDA
        graph needs, and no loss in a training forward, which uses each weight once."""
        import torch

        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.name == "bf16", cache_enabled=cache)


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags from Linux's /proc/cpuinfo (x86's ``flags``, Arm's ``Features``);
    none where the file cannot be read (another OS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache  # a CPU's flags do not change while a process runs
def cpu_has_avx512() -> bool:
    return "avx512f" in cpu_flags()


@functools.cache  # a CPU's flags do not change while a process runs; every trial asks
def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU's flags (Linux's /proc/cpuinfo) include a bf16 instruction set; False
    where the file cannot be read (another OS): fp32 is the safe side."""
    return bool(BF16_FLAGS & cpu_flags(cpuinfo))


def choose(device: torch.device | str, wanted: str = "auto", native_bf16: bool | None = None) -> Precision:
    """The precision of a step on ``device``: ``wanted`` when it is bf16 or fp32, else (auto)
    bf16 on CUDA and on a CPU with native bf16 (``native_bf16``, by default what
    :func:`cpu_has_native_bf16` finds), fp32 elsewhere."""
    if wanted not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {wanted!r}")
    kind = device if isinstance(device, str) else device.type
    if wanted == "auto":
        native = kind == "cuda" or (cpu_has_native_bf16() if native_bf16 is None else native_bf16)
        wanted = "bf16" if native else "fp32"
    return Precision(wanted, kind)


def check_precision(value: str) -> str:
    """``--precision`` as given, refused (UserError) unless it is one of :data:`PRECISIONS`."""
    from cerberus.errors import UserError

    if value not in PRECISIONS:
        raise UserError(f"--precision {value!r} is not a precision; allowed: {', '.join(PRECISIONS)}")
    return value
