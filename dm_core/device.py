"""One ``device`` argument everywhere: 'auto', 'cpu', 'cuda', 'cuda:1' or a torch.device."""
from __future__ import annotations

import torch

from .errors import DMError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise DMError(f"unknown device {device!r}: use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DMError(f"device {device!r} asked for, but CUDA is not available here: use --device cpu or auto")
    return resolved


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator that lives where the work happens, so drawing random numbers needs no host-to-device copy."""
    return torch.Generator(device=device).manual_seed(int(seed))
