"""What DM's successors share beyond the engine: reading intermediate feature maps, and grouping by class."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid)


def embed_with_taps(net: nn.Module, x: torch.Tensor, tap: tuple[type, ...] = (),
                    reduce: Callable[[torch.Tensor], object] | None = None) -> tuple[torch.Tensor, list]:
    """``net.embed(x)`` and ``reduce(output)`` of every module of a type in ``tap`` inside ``net.features``, in
    forward order. The reduction runs inside the hook, on a copy when gradients flow, so a later in-place op
    (an in-place ReLU straight after a convolution without norm) cannot change what was read."""
    taps: list = []
    if not tap:
        return net.embed(x), taps

    def hook(module, inputs, output):
        taps.append(reduce(output.clone() if torch.is_grad_enabled() else output))

    handles = [m.register_forward_hook(hook) for m in net.features.modules() if isinstance(m, tap)]
    try:
        embedding = net.embed(x)
    finally:
        for handle in handles:
            handle.remove()
    return embedding, taps


def by_class(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes * n, ...) grouped by class -> (num_classes, n, ...) in fp32."""
    return values.float().reshape(num_classes, -1, *values.shape[1:])
