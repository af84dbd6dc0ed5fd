"""Which device a command trains on, and what to call it in a record; torch is imported here only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cerberus.errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cpu" and device.index is None:
        return device
    if device.type != "cuda":
        raise UserError(f"--device {spec!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def device_name(device: torch.device) -> str:
    """The name a trial or a final model records: the GPU's model, or ``cpu``."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
