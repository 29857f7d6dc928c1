"""One ``device`` argument everywhere: "auto", "cpu", "cuda", "cuda:N" or a torch.device of those kinds."""
from __future__ import annotations

import re

import torch

from .errors import DMError

DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device to compute on. Only the CPU and CUDA are supported: anything else (mps, xpu, meta, cpu:3, ...)
    is refused here, with the same one line for the commands and the Python API."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device) if isinstance(device, torch.device) else device
    if not isinstance(text, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", text.strip()):
        raise DMError(f"unsupported device {device!r}: use {DEVICES}")
    resolved = torch.device(text.strip())
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DMError(f"device {text!r} asked for, but CUDA is not available here: use device cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DMError(f"device {text!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s): use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return resolved


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator that lives where the work happens, so drawing random numbers needs no host-to-device copy."""
    return torch.Generator(device=device).manual_seed(int(seed))
