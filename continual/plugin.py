"""GDumb with a condensed memory, as an Avalanche plugin: update the memory, reset the model, train on memory only.

Drop it into any Avalanche strategy::

    memory = CondensedMemory("dm", ipc=20, iterations=20_000)
    strategy = Naive(model=model, optimizer=SGD(model.parameters(), lr=0.01), train_epochs=0,
                     plugins=[GDumbMemoryPlugin(memory, seed=0, train_config=TrainConfig())])

With ``train_config`` the plugin trains the reset model itself with dm_core's resident-data trainer (the paper's
recipe: SGD, DSA augmentation on every batch, no DataLoader), and the strategy must run 0 epochs of its own.
Without it the plugin only swaps the strategy's training data for the memory and resets the model, and the
strategy's own loop (any epochs, optimiser, plugins) does the training on the memory.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from avalanche.core import SupervisedPlugin

from dm_core import DMError, TrainConfig, train_model

from .memory import CondensedMemory, step_seed


def _state(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and every buffer (persistent or not), by name."""
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


def restore_(model: torch.nn.Module, initial: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every parameter and buffer set to ``initial``'s values.

    In place when the two have the same tensors (names and shapes), so an optimiser keeps pointing at the model's
    parameters; otherwise (a model that grew, e.g. an incremental classifier) a fresh copy of ``initial``.
    """
    mine, theirs = _state(model), _state(initial)
    if [(n, t.shape, t.dtype) for n, t in mine] != [(n, t.shape, t.dtype) for n, t in theirs]:
        return copy.deepcopy(initial)
    with torch.no_grad():
        for (_, target), (_, source) in zip(mine, theirs):
            target.copy_(source)
    return model


class GDumbMemoryPlugin(SupervisedPlugin):
    """GDumb-style training from scratch on a class-balanced (condensed) memory.

    The model's values when the plugin first sees it are its initial values; before every later experience every
    parameter and buffer is restored to them (and the strategy's optimiser state is cleared), as Avalanche's
    ``GDumbPlugin`` does. ``seed`` fixes the training draws of every experience (step t uses
    ``step_seed(seed, t)``). ``trainer`` (same signature as ``dm_core.train_model``, the default) is there for tests
    and for users who want another recipe.
    """

    def __init__(self, memory: CondensedMemory, seed: int = 0, train_config: TrainConfig | None = None,
                 trainer: Callable | None = None, progress: bool = False):
        super().__init__()
        self.memory = memory
        self.seed = seed
        self.train_config = train_config
        self.trainer = trainer
        self.progress = progress
        self.initial: torch.nn.Module | None = None

    def before_training(self, strategy, **kwargs):
        """Sees the strategy before its first experience: refuse double training (ours plus its own epochs)."""
        if self.train_config is not None and strategy.train_epochs != 0:
            raise DMError(f"GDumbMemoryPlugin trains the model itself (train_config given), so the strategy must "
                          f"have train_epochs=0, not {strategy.train_epochs}")

    def before_train_dataset_adaptation(self, strategy, **kwargs):
        """Sees the model before the experience changes anything: keep its initial values, or go back to them."""
        if self.initial is None:
            self.initial = copy.deepcopy(strategy.model)
            return
        strategy.model_adaptation(self.initial)  # dynamic heads grow in the initial copy too (no-op otherwise)
        strategy.model = restore_(strategy.model, self.initial)
        strategy.optimizer.state.clear()  # no momentum carried over from the previous experience

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        """Sees ``strategy.experience`` (the new data): the memory takes it in and becomes the only training data."""
        self.memory.post_adapt(strategy, strategy.experience)
        strategy.adapted_dataset = self.memory.buffer

    def before_training_exp(self, strategy, **kwargs):
        """Sees the reset model and the dataloader over the memory; with ``train_config``, trains on the memory."""
        if self.train_config is None:
            return
        step = strategy.experience.current_experience
        images, labels = self.memory.tensors()
        trainer = self.trainer or train_model
        strategy.model = trainer(strategy.model, images, labels, self.train_config,
                                 seed=step_seed(self.seed, step), device=strategy.device, progress=self.progress)
