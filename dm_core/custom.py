"""A researcher's own network, wherever a model name is taken: an ``nn.Module`` (copied for every use) or a factory
of them (called with no argument, or with ``(channels, num_classes, image_size)``).

Distribution matching needs the network's embedding: its ``embed(x)`` method when it has one, else the input of its
last ``nn.Linear`` (the classifier), read with a forward hook. ``OwnNetwork`` wraps the user's module so that the
engine sees what every built-in network offers: ``embed``, ``forward``, ``classifier`` and ``features`` (the module
whose layers the successors tap). Anything that cannot work is refused with one line when the network is first
built for a dataset (wrong input shape, wrong number of logits, no embedding to read).
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch
from torch import nn

from .errors import DMError


def is_custom(model) -> bool:
    """Whether ``model`` is a user's network (a module or a factory) rather than a name or a ConvNet spec."""
    return isinstance(model, nn.Module) or (callable(model) and not isinstance(model, (str, tuple)))


def model_name(model) -> str:
    """How provenance, checkpoints and compile caches name a model: the name, or ``custom:Module`` for one's own."""
    if isinstance(model, nn.Module):
        return f"custom:{type(model).__qualname__}"
    if callable(model) and not isinstance(model, (str, tuple)):
        return f"custom:{getattr(model, '__qualname__', type(model).__qualname__)}"
    return str(getattr(model, "name", model))


class OwnNetwork(nn.Module):
    """A user's module with the interface the engine and the trainers use."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        self._last_linear = linears[-1] if linears else None
        if not callable(getattr(net, "embed", None)) and self._last_linear is None:
            raise DMError(f"{type(net).__name__} has neither an embed(x) method nor an nn.Linear layer, so its "
                          f"embedding cannot be read: give it embed(x) returning the classifier's input")

    @property
    def features(self) -> nn.Module:
        return self.net

    @property
    def classifier(self) -> nn.Module:
        if self._last_linear is None:
            raise DMError(f"{type(self.net).__name__} has no nn.Linear classifier (needed by this method)")
        return self._last_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        own = getattr(self.net, "embed", None)
        if callable(own):
            return own(x).flatten(1)
        seen: list[torch.Tensor] = []
        handle = self._last_linear.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            self.net(x)
        finally:
            handle.remove()
        return seen[-1].flatten(1)

    def extra_repr(self) -> str:
        own = callable(getattr(self.net, "embed", None))
        return "embedding: " + ("embed(x)" if own else "input of the last Linear")


def build_custom(model: nn.Module | Callable, channels: int, num_classes: int,
                 image_size: tuple[int, int]) -> nn.Module:
    """A fresh copy of a user's network (or the factory's new one), checked on one input of the data's shape."""
    name = model_name(model)
    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
    else:
        try:
            takes = len(inspect.signature(model).parameters)
        except (TypeError, ValueError):
            takes = 0
        net = model(channels, num_classes, tuple(image_size)) if takes >= 3 else model()
        if not isinstance(net, nn.Module):
            raise DMError(f"the model factory {name} returned a {type(net).__name__}, not an nn.Module")
    wrapped = OwnNetwork(net)
    was_training = net.training
    probe = torch.zeros(2, channels, *image_size, device=next(net.parameters(), torch.zeros(())).device)
    try:
        with torch.no_grad():
            logits, embedding = wrapped.eval()(probe), wrapped.embed(probe)
    except Exception as exc:  # any error of the user's forward pass on this input shape
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DMError(f"{name} cannot take {channels}x{image_size[0]}x{image_size[1]} images ({type(exc).__name__}: "
                      f"{first})") from None
    wrapped.train(was_training)
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise DMError(f"{name} returns logits of shape {tuple(logits.shape)}, not (batch, {num_classes}) for the "
                      f"{num_classes} classes of the data")
    if embedding.dim() != 2 or embedding.shape[0] != 2:
        raise DMError(f"{name}'s embedding has shape {tuple(embedding.shape)}: embed(x) must give one vector per image")
    return wrapped
