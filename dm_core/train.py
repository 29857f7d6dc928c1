"""Training from scratch on a (small) set and testing on the real test set, docs/method.md section 4.

The airbench way: the whole set sits on the device, each epoch is one ``randperm`` and slices of it, augmentation
is one batched DSA call per batch, and the loop never reads a number back to the host.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import augment
from .compile import architecture_key, check_compile, compiled, forward_flops, give_up, should_compile
from .data import ImageDataset
from .device import make_generator, resolve_device
from .distributed import gather_objects, shard_blocks, world
from .errors import DMError
from .nets import build_model, default_model, reinit_
from .precision import check_precision, memory_format, precision_scope
from .synset import SyntheticSet
from .validate import check_int, check_number, check_seed

# The version of the training recipe, recorded where results are reused by key (NAS budgets, continual run folders):
# 2 follows the reference's loop (E + 1 passes, a fresh optimiser at the drop); 1 ran E passes and kept the momentum.
RECIPE = 2


@dataclass(frozen=True)
class TrainConfig:
    """The recipe of training from scratch (docs/method.md section 4).

    ``epochs`` E follows the reference code's loop: passes 0..E (E + 1 in all), the learning rate x 0.1 after pass
    E // 2 + 1, with a fresh optimiser (its momentum restarts). With ``iterations`` N instead: exactly N SGD steps,
    the same drop (fresh optimiser) at step N // 2.
    """

    epochs: int = 1000
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_epochs: int | None = None  # passes at the full learning rate; None: epochs // 2 + 2 (the reference's)
    augment: str | None = None  # DSA strategy of every batch; "none": off; None: the dataset's (``resolve``)
    augment_groups: str = "batch"  # one op group per mini-batch, per-sample parameters (reference); or "sample"
    iterations: int | None = None  # if set: exactly this many SGD steps (lr decay at half), epochs ignored
    precision: str = "fp32"  # or "bf16" (autocast), an explicit option
    compile: str = "auto"  # torch.compile the forward pass: "auto" where it pays (dm_core/compile.py), "on", "off"

    def __post_init__(self):
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        for name in ("iterations", "decay_epochs"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        check_number("lr", self.lr)
        check_number("momentum", self.momentum, zero=True)
        check_number("weight_decay", self.weight_decay, zero=True)
        check_precision(self.precision)
        check_compile(self.compile)
        augment.DiffAugment.check_groups(self.augment_groups)
        if self.augment is not None and self.augment != "none":
            augment.parse_strategy(self.augment)

    def resolve(self, dataset: str) -> TrainConfig:
        """This recipe with the dataset's augmentation strategy when it names none (docs/method.md section 3)."""
        return self if self.augment is not None else replace(self, augment=augment.default_strategy(dataset))

    @property
    def strategy(self) -> str:
        """The strategy in force ("none": no augmentation); None counts as the six-group default, so callers that
        know the dataset ``resolve`` first."""
        return self.augment if self.augment is not None else augment.DEFAULT_STRATEGY

    def schedule(self, num_samples: int) -> tuple[int, int, int]:
        """(steps per epoch, total steps, step at which the learning rate drops)."""
        per_epoch = math.ceil(num_samples / self.batch_size)
        if self.iterations is not None:  # at least one step at the full learning rate, even for 1 step
            return per_epoch, self.iterations, max(1, self.iterations // 2)
        decay = self.decay_epochs if self.decay_epochs is not None else self.epochs // 2 + 2
        return per_epoch, (self.epochs + 1) * per_epoch, decay * per_epoch

    def passes(self, num_samples: int) -> int:
        """Passes over ``num_samples`` images (the reference's epochs 0..E: E + 1), a last partial one counted."""
        per_epoch, total, _ = self.schedule(num_samples)
        return -(-total // per_epoch)


def forward_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What a training step differentiates (compiled per architecture and batch shape where that pays)."""
    return F.cross_entropy(model(x).float(), y)


def step_keys(model: nn.Module, x: torch.Tensor, config: TrainConfig, device: torch.device) -> list[tuple]:
    """One compiled graph per batch shape a training run meets: the full batch and, if any, the short last one."""
    sizes = {min(config.batch_size, len(x)), len(x) % config.batch_size} - {0}
    fmt = memory_format(device, config.precision)
    return [("train", architecture_key(model), (n, *x.shape[1:]), str(x.dtype), device.type, config.precision,
             str(fmt)) for n in sorted(sizes)]


def compile_pays(model: nn.Module, x: torch.Tensor, config: TrainConfig, device: torch.device,
                 runs: int = 1) -> bool:
    """Whether ``runs`` trainings of networks like ``model`` on (x, .) are faster compiled, compile time included
    (a forward and backward pass cost about 3 forward passes)."""
    if config.compile == "off":
        return False
    _, total, _ = config.schedule(len(x))
    flops = 3 * forward_flops(model, tuple(x.shape[1:]), device) * min(config.batch_size, len(x)) * total * runs
    return should_compile(config.compile, device, step_keys(model, x, config, device), flops)


def train_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig = TrainConfig(),
                seed: int = 0, device: str | torch.device = "auto", progress: bool = False,
                on_epoch: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Train ``model`` from its current weights on (x, y); returns it in eval mode, on ``device``.

    ``on_epoch(epoch, model)`` is called after each full epoch (epoch counts from 1), e.g. to report a validation
    accuracy; the model is put back in train mode afterwards.
    """
    device = resolve_device(device)
    check_seed(seed)
    if len(x) == 0 or len(x) != len(y):
        raise DMError(f"cannot train on {len(x)} images with {len(y)} labels")
    fmt = memory_format(device, config.precision)
    model = model.to(device, memory_format=fmt).train()
    x = x.to(device, memory_format=fmt)
    y = y.to(device)
    generator = make_generator(seed, device)
    augment_batch = (augment.DiffAugment(generator, config.strategy, config.augment_groups)
                     if config.strategy != "none" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    per_epoch, total, decay_at = config.schedule(len(x))
    keys = {key[2][0]: key for key in step_keys(model, x, config, device)}
    compiling = compile_pays(model, x, config, device)
    proven = set()  # batch sizes whose compiled graph has run forward and backward once
    order = None
    for step in tqdm(range(total), desc="train", disable=not progress, leave=False, dynamic_ncols=True):
        within = step % per_epoch
        if within == 0:
            order = torch.randperm(len(x), generator=generator, device=device)
        if step == decay_at:  # as the reference: a fresh optimiser at a tenth of the rate (momentum restarts)
            optimizer = torch.optim.SGD(model.parameters(), lr=config.lr * 0.1, momentum=config.momentum,
                                        weight_decay=config.weight_decay)
        idx = order[within * config.batch_size:(within + 1) * config.batch_size]
        xb = x[idx]
        if augment_batch is not None:
            xb = augment_batch(xb)
        optimizer.zero_grad(set_to_none=True)
        try:
            with precision_scope(device, config.precision):
                loss = (compiled(forward_loss, keys[len(idx)]) if compiling else forward_loss)(model, xb, y[idx])
            loss.backward()
        except Exception as exc:  # a compile that fails at its first call: "auto" carries on eagerly
            if not compiling or len(idx) in proven:
                raise
            give_up(keys[len(idx)], exc, config.compile)
            compiling = False
            optimizer.zero_grad(set_to_none=True)
            with precision_scope(device, config.precision):
                loss = forward_loss(model, xb, y[idx])
            loss.backward()
        proven.add(len(idx))
        optimizer.step()
        if on_epoch is not None and within == per_epoch - 1:
            on_epoch((step + 1) // per_epoch, model)
            model.train()
    return model.eval()


# Images per evaluation pass when the caller does not say. CPU: 128, whose activations stay in the caches. Measured on
# this project's 2-core EPYC, one thread, 10,000 MNIST-shaped images through ConvNet-w32 (machine shared, load 5):
# batch 64 8.1 s, 128 7.4 s, 256 9.9 s, 1024 14.6 s, i.e. 128 is 2.0x faster than 1024 (issue 23 measured 2.8-3.6 s
# against 5.9-6.5 s on a quieter machine). CUDA: 1024, to fill the device. Eval mode, so the accuracy does not depend
# on the batch (tests/test_many.py checks it).
EVAL_BATCH = {"cpu": 128, "cuda": 1024}


def eval_batch(device: torch.device) -> int:
    return EVAL_BATCH.get(device.type, 1024)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str | torch.device = "auto",
                      batch_size: int | None = None, classes=None, precision: str = "fp32") -> float:
    """Top-1 accuracy in [0, 1] over (x, y), restricted to samples of ``classes`` when given. ``batch_size`` None:
    the device's (``EVAL_BATCH``). Data already on the device is not copied."""
    device = resolve_device(device)
    batch_size = batch_size or eval_batch(device)
    if classes is not None:
        keep = torch.isin(y, torch.as_tensor(list(classes), dtype=y.dtype))
        x, y = x[keep], y[keep]
    if len(y) == 0:
        raise DMError("no test images to evaluate on")
    model = model.to(device).eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size].to(device, non_blocking=True)
        with precision_scope(device, precision):
            pred = model(xb).argmax(dim=1)
        correct += (pred == y[start:start + batch_size].to(device)).sum()
    return correct.item() / len(y)


def fresh_model(model: str | None, data: ImageDataset, seed: int, device: torch.device) -> nn.Module:
    """A newly initialised network (None: the ConvNet of the data's image size), its weights drawn from ``seed``
    (no global RNG involved)."""
    net = build_model(model or default_model(data.image_size), data.channels, data.num_classes, data.image_size)
    return reinit_(net, make_generator(seed, torch.device("cpu"))).to(device)


def test_job(x: torch.Tensor, y: torch.Tensor, data: ImageDataset, model, config: TrainConfig, seed: int,
             test_classes=None):
    """The ``dm_core.many`` job of training a fresh ``model`` (None: the image size's ConvNet) on (x, y) and testing
    it on ``data``'s test set."""
    from .many import TrainJob  # many builds on this module

    return TrainJob(model or default_model(data.image_size), x, y, config.resolve(data.name), seed,
                    tests=((data.x_test, data.y_test),), num_classes=data.num_classes,
                    classes=None if test_classes is None else tuple(test_classes))


def train_and_test(x: torch.Tensor, y: torch.Tensor, data: ImageDataset, model: str | None = None,
                   config: TrainConfig = TrainConfig(), seed: int = 0, device: str | torch.device = "auto",
                   test_classes=None, progress: bool = False) -> float:
    """Train a fresh ``model`` on (x, y) and return its accuracy on ``data``'s test set."""
    from .many import run_job

    return run_job(test_job(x, y, data, model, config, seed, test_classes), device, progress).accuracies[0]


@dataclass
class EvalResult:
    """Test accuracies of the networks trained on a set, as fractions in [0, 1] (as ``evaluate_accuracy``'s)."""

    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        """Population standard deviation over the networks (0 for one)."""
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def as_dict(self) -> dict:
        """The figures a person reads, in percent (rounded to 0.001 points), and the seconds."""
        return {"mean_percent": round(100 * self.mean, 3), "std_percent": round(100 * self.std, 3),
                "accuracies_percent": [round(100 * a, 3) for a in self.accuracies], "seconds": round(self.seconds, 3)}


def check_compatible(synset: SyntheticSet, data: ImageDataset) -> None:
    """Refuse a set made from another dataset (by its provenance), or whose images or labels cannot be this one's."""
    made_from = synset.meta.get("dataset")
    if made_from is not None and made_from != data.name:
        raise DMError(f"the set was made from {made_from}, not {data.name}: evaluate it on {made_from}")
    if tuple(synset.images.shape[1:]) != (data.channels, *data.image_size):
        raise DMError(f"the set holds {tuple(synset.images.shape[1:])} images but {data.name} has "
                      f"{(data.channels, *data.image_size)}: evaluate it on the dataset it was made from")
    if int(synset.labels.max()) >= data.num_classes or int(synset.labels.min()) < 0:
        raise DMError(f"the set's labels go beyond the {data.num_classes} classes of {data.name}")
    if not torch.isfinite(synset.images).all():
        raise DMError("the set holds non-finite pixels (NaN or inf): make it again with a lower --lr-img")


def evaluate_set(synset: SyntheticSet, data: ImageDataset, model: str | None = None, repeats: int = 5,
                 config: TrainConfig = TrainConfig(), seed: int = 0, device: str | torch.device = "auto",
                 progress: bool = True, workers: int | str = "auto") -> EvalResult:
    """Train ``repeats`` fresh networks (seeds seed..seed+repeats-1) on the set and test each on ``data``'s test set.
    ``model`` None: the ConvNet of the image size; ``config.augment`` None: the dataset's strategy.

    The networks train through ``dm_core.many.train_many``: ``workers`` (auto: what the machine has; 1: one after
    another in this process) bounds how many train at once, in worker processes on the CPU, stacked on CUDA; each
    network's result is its own seed's, so the accuracies do not depend on it (docs/dm_core_api.md says how far).

    Under torch.distributed, rank r trains models r, r + world, ... and the accuracies are gathered in model order,
    so every rank returns what one process would; on the CPU each rank's workers share this node's cores with the
    other ranks of the node (``auto``: cores // LOCAL_WORLD_SIZE).
    """
    from .many import check_workers, train_many  # many builds on this module

    check_int("repeats", repeats)
    check_workers(workers)
    check_seed(seed)
    check_compatible(synset, data)
    device = resolve_device(device)
    config = config.resolve(data.name)
    started = time.perf_counter()
    w = world()
    shard_blocks(repeats, w)  # refuses more processes than networks
    mine = range(w.rank, repeats, w.size)
    if config.compile == "auto":  # decided once for all the models: compiling may pay only over several of them
        probe = fresh_model(model, data, seed, device)
        pays = compile_pays(probe, synset.images, config, device, runs=len(mine))
        config = replace(config, compile="on" if pays else "off")
    jobs = [test_job(synset.images, synset.labels, data, model, config, seed + i) for i in mine]
    results = train_many(jobs, device, workers, progress=progress and w.is_main, desc=f"evaluate {model}")
    accuracies = {i: result.accuracies[0] for i, result in zip(mine, results)}
    for part in gather_objects(accuracies):
        accuracies.update(part)
    return EvalResult([accuracies[i] for i in range(repeats)], time.perf_counter() - started)
