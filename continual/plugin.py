"""GDumb with a condensed memory, as an Avalanche plugin: update the memory, reset the model, train on memory only.

Drop it into any Avalanche strategy::

    memory = CondensedMemory(MemoryBuilder("dm", ipc=20, template=data, options={"iterations": 20_000}))
    strategy = Naive(model=model, optimizer=SGD(model.parameters(), lr=0.01), train_epochs=0,
                     plugins=[GDumbMemoryPlugin(memory, seed=0, train_config=TrainConfig())])

With ``train_config`` the plugin trains the re-initialised model itself with dm_core's resident-data trainer (the
paper's recipe: SGD, DSA augmentation on every batch, no DataLoader), and the strategy must run 0 epochs of its own.
Without it the plugin only swaps the strategy's training data for the memory and resets the model, and the
strategy's own loop (any epochs, optimiser, plugins) does the training on the memory.
"""
from __future__ import annotations

from typing import Callable

import torch
from avalanche.core import SupervisedPlugin

from dm_core import DMError, TrainConfig, reinit_, train_model

from .memory import CondensedMemory, step_seed


class GDumbMemoryPlugin(SupervisedPlugin):
    """GDumb-style training from scratch on a class-balanced (condensed) memory.

    ``seed`` fixes the model's fresh initialisation and the training draws of every experience (step t uses
    ``step_seed(seed, t)``). ``trainer`` (same signature as ``dm_core.train_model``, which is the default) is
    there for tests and for users who want another recipe.
    """

    def __init__(self, memory: CondensedMemory, seed: int = 0, train_config: TrainConfig | None = None,
                 trainer: Callable | None = None, progress: bool = False):
        super().__init__()
        self.memory = memory
        self.seed = seed
        self.train_config = train_config
        self.trainer = trainer
        self.progress = progress

    def before_training(self, strategy, **kwargs):
        """Sees the strategy before its first experience: refuse double training (ours plus its own epochs)."""
        if self.train_config is not None and strategy.train_epochs != 0:
            raise DMError(f"GDumbMemoryPlugin trains the model itself (train_config given), so the strategy must "
                          f"have train_epochs=0, not {strategy.train_epochs}")

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        """Sees ``strategy.experience`` (the new classes' data) and ``strategy.adapted_dataset`` (that data).

        Adds the new classes to the memory, makes the memory the only training data, and re-initialises the model
        in place (so the optimiser the strategy builds next still points at its parameters).
        """
        step = strategy.experience.current_experience
        self.memory.post_adapt(strategy, strategy.experience)
        strategy.adapted_dataset = self.memory.buffer
        device = next(strategy.model.parameters()).device
        reinit_(strategy.model, torch.Generator(device=device).manual_seed(step_seed(self.seed, step)))

    def before_training_exp(self, strategy, **kwargs):
        """Sees the freshly re-initialised model and the dataloader over the memory; trains on the memory here."""
        if self.train_config is None:
            return
        step = strategy.experience.current_experience
        images, labels = self.memory.tensors()
        trainer = self.trainer or train_model
        strategy.model = trainer(strategy.model, images, labels, self.train_config,
                                 seed=step_seed(self.seed, step), device=strategy.device, progress=self.progress)
