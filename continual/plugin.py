"""GDumb with a condensed memory, as an Avalanche plugin: update the memory, reset the model, train on memory only.

Drop it into any Avalanche strategy::

    memory = CondensedMemory("dm", ipc=20, iterations=20_000)
    strategy = Naive(model=model, optimizer=SGD(model.parameters(), lr=0.01), train_epochs=0,
                     plugins=[GDumbMemoryPlugin(memory, seed=0, train_config=TrainConfig())])

With ``train_config`` the strategy's own loop trains the reset model with the paper's recipe (dm_core's
``train_model``: SGD with momentum and weight decay, the learning rate x0.1 at half, one DSA augmentation draw per
mini-batch, the whole memory resident on the device, no DataLoader): the plugin hands the strategy the memory as
resident mini-batches, the recipe's optimiser, its epochs and its learning-rate drop, so Avalanche's loop, its
metrics and its loggers see every epoch and every loss, and multi-head models get their task labels. In fp32 the
weights are bit for bit those of ``dm_core.train_model``. The strategy must be made with ``train_epochs=0`` (the
recipe says how many). Without ``train_config`` the plugin only swaps the strategy's training data for the memory and
resets the model, and the strategy's own loop (its epochs, optimiser, plugins) does the training on the memory.
"""
from __future__ import annotations

import copy
import math

import torch
from avalanche.core import SupervisedPlugin

from dm_core import DMError, TrainConfig, make_generator
from dm_core.augment import DiffAugment
from dm_core.precision import memory_format, precision_scope

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


class ResidentBatches:
    """One epoch of the paper's recipe over tensors that live on the device: a fresh permutation from ``generator``,
    then the mini-batches in its order, each augmented by one DSA draw. These are the draws ``dm_core.train_model``
    makes, in its order, so a strategy iterating it trains as that function does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, batch_size: int,
                 generator: torch.Generator, augment: DiffAugment | None):
        self.x, self.y, self.t = x, y, t
        self.batch_size, self.generator, self.augment = batch_size, generator, augment

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator, device=self.x.device)
        for start in range(0, len(self.y), self.batch_size):
            idx = order[start:start + self.batch_size]
            xb = self.x[idx]
            yield (self.augment(xb) if self.augment is not None else xb), self.y[idx], self.t[idx]


class GDumbMemoryPlugin(SupervisedPlugin):
    """GDumb-style training from scratch on a class-balanced (condensed) memory.

    The model's values when the plugin first sees it are its initial values; before every later experience every
    parameter and buffer is restored to them (and the strategy's optimiser state is cleared), as Avalanche's
    ``GDumbPlugin`` does. With ``train_config`` (a ``dm_core.TrainConfig``) the strategy's loop trains with the
    paper's recipe (see the module docstring); ``seed`` fixes its draws (experience t uses ``step_seed(seed, t)``).
    """

    def __init__(self, memory: CondensedMemory, seed: int = 0, train_config: TrainConfig | None = None):
        super().__init__()
        if train_config is not None and train_config.compile == "on":
            raise DMError("GDumbMemoryPlugin trains inside Avalanche's loop, which it does not compile: give "
                          "TrainConfig(compile='auto') or 'off' (torch.compile your model yourself to compile it)")
        self.memory = memory
        self.seed = seed
        self.train_config = train_config
        self.initial: torch.nn.Module | None = None
        self._step = 0  # SGD steps of this experience
        self._schedule: tuple[int, int, int] = (0, 0, 0)
        self._scope = None

    def state_dict(self) -> dict:
        """What the plugin carries between experiences (for ``continual.checkpoint``): the initial model."""
        return {"initial": self.initial}

    def load_state_dict(self, state: dict) -> None:
        self.initial = state["initial"]

    def before_training(self, strategy, **kwargs):
        """Sees the strategy before its first experience: refuse double training (ours plus its own epochs)."""
        if self.train_config is not None and strategy.train_epochs != 0:
            raise DMError(f"GDumbMemoryPlugin trains the model with train_config's epochs, so the strategy must "
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
        """Sees the reset model, the strategy's dataloader and optimiser for the experience: with ``train_config``,
        they become the recipe's (resident memory batches, SGD) and the strategy runs the recipe's epochs."""
        config = self.train_config
        if config is None:
            return
        device = strategy.device
        fmt = memory_format(device, config.precision)
        images, labels = self.memory.tensors()
        x = images.to(device, memory_format=fmt)
        strategy.model = strategy.model.to(device, memory_format=fmt)
        # the order of the draws is train_model's: the generator, the augmenter (seeded from it), then each epoch's
        # permutation and each batch's augmentation
        generator = make_generator(step_seed(self.seed, strategy.experience.current_experience), device)
        augment = DiffAugment(generator, config.strategy, config.augment_groups) if config.strategy != "none" else None
        strategy.dataloader = ResidentBatches(x, labels.to(device), self.memory.task_labels().to(device),
                                              config.batch_size, generator, augment)
        strategy.optimizer = torch.optim.SGD(strategy.model.parameters(), lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        per_epoch, total, decay_at = config.schedule(len(labels))
        self._schedule, self._step = (per_epoch, total, decay_at), 0
        strategy.train_epochs = config.passes(len(labels))

    def before_training_iteration(self, strategy, **kwargs):
        """Sees the mini-batch about to be trained on: at the recipe's step, the learning rate drops with a fresh
        optimiser (its momentum restarts), as in ``dm_core.train_model``."""
        config = self.train_config
        if config is not None and self._step == self._schedule[2]:
            strategy.optimizer = torch.optim.SGD(strategy.model.parameters(), lr=config.lr * 0.1,
                                                 momentum=config.momentum, weight_decay=config.weight_decay)

    def before_forward(self, strategy, **kwargs):
        """The recipe's precision (bf16: autocast) around the forward pass."""
        if self.train_config is not None and strategy.is_training:
            self._scope = precision_scope(strategy.device, self.train_config.precision)
            self._scope.__enter__()

    def after_forward(self, strategy, **kwargs):
        """Sees the logits: the loss is computed in fp32 from them, as dm_core's trainer does."""
        if self._scope is not None:
            self._scope.__exit__(None, None, None)
            self._scope = None
            strategy.mb_output = strategy.mb_output.float()

    def after_training_iteration(self, strategy, **kwargs):
        """Counts the recipe's steps; with ``TrainConfig.iterations`` the training stops after exactly that many."""
        if self.train_config is None:
            return
        self._step += 1
        if self.train_config.iterations is not None and self._step >= self._schedule[1]:
            strategy.stop_training()

    def after_training_exp(self, strategy, **kwargs):
        """The strategy is given back its own epochs (0) for the next experience."""
        if self.train_config is not None:
            strategy.train_epochs = 0
