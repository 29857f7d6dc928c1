"""Compiling where it pays: ``torch.compile`` of a network's forward pass, chosen by a measured cost model and cached
per architecture and input shape.

Inductor fuses the norm, activation and pooling that follow each convolution into one pass over the activations.
On this project's 2-core CPU (benchmarks/speed.py, the paper's ConvNet on CIFAR-shaped data, quiet machine) that made
a DM iteration 1.5x and a training epoch 1.54x faster than eager dm_core, and compiling took 17 s for the training
graph and 23 s for DM's two (3 to 6 times that when the machine was shared; a few seconds when inductor's on-disk
cache already holds the graph). So ``compile="auto"`` compiles only when the work ahead is long enough to win that back:

    eager seconds ~ FLOPs of the work / COSTS[device].eager_flops
    compile if     eager seconds * COSTS[device].saving >= graphs * COSTS[device].compile_seconds

where FLOPs are counted once per architecture by ``torch.utils.flop_counter`` on a one-image forward pass, and a
graph already compiled in this process costs nothing. ``"on"`` and ``"off"`` force the choice. Results are the same
maths either way (fused kernels round differently: compiled and eager training reach the same accuracy, not the same
bits), and the choice depends only on the model, the shapes and the step count, never on a clock, so a run is
reproducible.
"""
from __future__ import annotations

import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import FunctionType

import torch
from torch import nn

from .errors import DMError

COMPILE_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class CostModel:
    """What compiling costs and saves on one kind of device (figures from benchmarks/speed.py)."""

    eager_flops: float  # FLOP/s of eager training / DM work, counting convolutions and matmuls only
    saving: float  # fraction of the eager time a compiled graph saves
    compile_seconds: float  # one cold compile of one graph (forward and backward)


COSTS = {
    # Measured on the 2-core AMD EPYC of this project, 1 thread (README, "Measured"): quiet, eager DM and training ran
    # at 40-50 GFLOP/s, compiling saved 33-35% and took 12-17 s a graph; shared (load 11-17), 10-12 GFLOP/s, 25-31%
    # and 64-70 s. Either way one graph pays for itself after about 2.5 TFLOP of eager work.
    "cpu": CostModel(eager_flops=4e10, saving=0.33, compile_seconds=20.0),
    # Not measured (no GPU was lent): a conservative guess, so auto compiles on CUDA only for long runs.
    "cuda": CostModel(eager_flops=5e12, saving=0.3, compile_seconds=60.0),
}


def check_compile(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise DMError(f"unknown compile mode {mode!r}: use {', '.join(COMPILE_MODES)}")
    return mode


_FLOPS: dict[str, int] = {}
_COMPILED: dict[tuple, Callable] = {}
_UNAVAILABLE: list[str] = []  # why compiling is impossible here, once found out


def architecture_key(model: nn.Module) -> str:
    """Two networks with the same key compute the same function of their weights (same layers, same shapes)."""
    return f"{type(model).__module__}.{type(model).__qualname__}:{model!r}"


def forward_flops(model: nn.Module, sample_shape: tuple[int, ...], device: torch.device) -> int:
    """FLOPs of one forward pass of one sample (convolutions and matmuls), counted once per architecture and shape."""
    key = f"{architecture_key(model)}|{tuple(sample_shape)}"
    if key not in _FLOPS:
        from torch.utils.flop_counter import FlopCounterMode

        was_training = model.training
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.zeros(1, *sample_shape, device=device))
        model.train(was_training)
        _FLOPS[key] = int(counter.get_total_flops())
    return _FLOPS[key]


def unavailable_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot run here (no C++ compiler for the CPU, no Triton for CUDA), or None."""
    if sys.platform == "win32":
        return "torch.compile is not used on Windows here"
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "no C++ compiler (g++, c++ or clang++) on the PATH"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed"
    if device.type not in ("cpu", "cuda"):
        return f"compiling for {device.type} is not supported here"
    return _UNAVAILABLE[0] if _UNAVAILABLE else None


def should_compile(mode: str, device: torch.device, keys: list[tuple], flops: float) -> bool:
    """The decision for work of ``flops`` FLOPs that runs the graphs ``keys`` (one per input shape)."""
    check_compile(mode)
    if mode == "off":
        return False
    reason = unavailable_reason(device)
    if reason is not None:
        if mode == "on":
            raise DMError(f"cannot compile on {device}: {reason}; use compile off")
        return False
    if mode == "on":
        return True
    cost = COSTS.get(device.type)
    if cost is None:
        return False
    new_graphs = sum(1 for key in keys if key not in _COMPILED)
    return flops / cost.eager_flops * cost.saving >= new_graphs * cost.compile_seconds


def compiled(fn: FunctionType, key: tuple) -> Callable:
    """``torch.compile(fn)`` for one architecture and input shape, made once per process and then reused.

    Each key compiles its own copy of ``fn``'s code: dynamo keeps its graphs per code object and stops compiling a
    code object after a few recompilations, which a NAS run over hundreds of architectures would otherwise reach.
    """
    if key not in _COMPILED:
        own = FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        _COMPILED[key] = torch.compile(own, dynamic=False)
    return _COMPILED[key]


def give_up(key: tuple, exc: BaseException, mode: str) -> None:
    """A compile that failed at its first call: under ``auto`` say so once and go on eagerly; under ``on`` stop."""
    _COMPILED.pop(key, None)
    if mode == "on":
        raise DMError(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                      f"use compile off") from exc
    if not _UNAVAILABLE:
        _UNAVAILABLE.append(f"an earlier compile failed ({type(exc).__name__})")
        warnings.warn(f"torch.compile failed ({type(exc).__name__}); continuing without compiling", RuntimeWarning,
                      stacklevel=3)
