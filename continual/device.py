"""The device of a memory or a run, checked once where it is given, in the words of the Python API."""
from __future__ import annotations

import torch

from dm_core import DMError, resolve_device


def check_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device: "auto" (CUDA when there is one), "cpu", "cuda" or "cuda:N". One that does not
    exist here is refused now, before any work, not when the first experience has been trained."""
    if isinstance(device, torch.device):
        device = str(device)
    try:
        resolved = resolve_device(device)
    except DMError:
        if isinstance(device, str) and device.split(":")[0] == "cuda":
            raise DMError(f"device {device!r}: CUDA is not available here; use cpu or auto") from None
        raise DMError(f"unknown device {device!r}: use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DMError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 to "
                      f"cuda:{torch.cuda.device_count() - 1}, cpu or auto")
    return resolved

