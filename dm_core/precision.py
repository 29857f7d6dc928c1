"""Numeric precision of a run: ``"fp32"`` (the reference's, the default of everything that produces a reported number)
or ``"bf16"`` (autocast to bfloat16, an explicit option: tensor cores on CUDA, AMX on recent x86 CPUs).

``precision_scope(device, precision)`` is the one place that decides what a forward pass runs in. fp32 on CUDA also
turns TF32 off for its duration, so "fp32" means fp32 on every GPU (Ampere and later use TF32 by default).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .errors import DMError

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise DMError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
    return precision


@contextmanager
def precision_scope(device: torch.device, precision: str = "fp32"):
    check_precision(precision)
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """channels_last only where it pays: bf16 convolutions on CUDA (measured slower on the CPU, issue 13's table)."""
    return torch.channels_last if (device.type == "cuda" and precision == "bf16") else torch.contiguous_format
