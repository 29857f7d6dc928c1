"""One-shot search on a proxy: ``python -m nas.search --strategy darts --proxy dm10 ...``.

``ConvNetSupernet`` offers the ConvNet space to NNI's one-shot strategies with every choice left open, under the same
labels as the multi-trial space (``depth``, ``width``, ``act``, ``norm``, ``pool``), so a selected sample is the same
``ConvNetSpec``. Inside a block, ``norm`` and ``act`` are ``LayerChoice``s shared by every block (one label, one
decision); ``width`` and ``pool`` change the shape of what follows, so they choose between trunks (one per width and
pooling) that end in their own classifiers; the logits have one shape, so DARTS can mix them. In a trunk, ``depth`` is
an ``InputChoice`` between the classifier outputs taken after block 1, 2, ...: every depth shares the blocks before it.

The supernet is trained on the proxy set (weights) with NNI's Lightning ``Classification`` evaluator (Adam, no
augmentation); DARTS-style strategies update their architecture weights on batches of the validation split (per
epoch, as many validation images as the proxy holds, drawn afresh). DARTS, GumbelDARTS and Proxyless then export
their most likely architecture. RandomOneShot trains the supernet on random
paths and exports an arbitrary one (NNI says so), so here every architecture of the space is scored with the
inherited weights on (up to) 1000 validation images and the best is selected. ENAS needs ``tianshou``.

The selected architecture is then trained from scratch on the proxy ``--repeats`` times and recorded in
``results.csv`` exactly like a multi-trial trial; the selection itself goes to ``oneshot.csv`` (a rerun reuses it).
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import nni
import torch
from nni.nas.evaluator.pytorch import Classification
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace
from nni.nas.space import RawFormatModelSpace
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from dm_core import ConvNetSpec, DMError
from dm_core.nets import AvgPool2x2, make_norm
from dm_core.records import Column, Schema, Table

from .data import SearchData
from .plan import SearchPlan, SearchSummary, make_evaluator
from .space import SearchSpace, spec_from_sample
from .trial import TrainTask

RANKING_IMAGES = 1000  # validation images that score each architecture under RandomOneShot's inherited weights
ONESHOT = Schema(
    name="nas-oneshot",
    version=1,
    columns=(Column("strategy"), Column("proxy"), Column("budget"), Column("seed", "int"),
             Column("supernet_epochs", "int"), Column("arch"), Column("seconds", "float")),
    key=("strategy", "proxy", "budget", "seed", "supernet_epochs"),
    volatile=("seconds",),
)

_ACTS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01)}  # not in place: DARTS
# feeds one tensor to every candidate


def _choice(label: str, candidates: dict[str, nn.Module]) -> nn.Module:
    """A LayerChoice, or the module itself when there is nothing to choose (its label is then fixed)."""
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    return LayerChoice(candidates, label=label)


class _Block(nn.Module):
    def __init__(self, cin: int, width: int, pad: int, size: tuple[int, int], space: SearchSpace, pool: str):
        super().__init__()
        self.conv = nn.Conv2d(cin, width, kernel_size=3, padding=pad)
        height, wide = size[0] + 2 * pad - 2, size[1] + 2 * pad - 2
        self.norm = _choice("norm", {n: make_norm(n, width, height, wide) for n in space.norm})
        self.act = _choice("act", {a: _ACTS[a]() for a in space.act})
        self.pool = {"none": nn.Identity, "maxpool": lambda: nn.MaxPool2d(2, 2),
                     "avgpool": AvgPool2x2}[pool]()
        self.out_size = (height // 2, wide // 2) if pool != "none" else (height, wide)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class _Trunk(nn.Module):
    """The blocks of one width and pooling; the depth choice picks (DARTS: mixes) the classifier output taken after
    block d, so every depth shares the blocks before it."""

    def __init__(self, space: SearchSpace, width: int, pool: str, channels: int, num_classes: int,
                 image_size: tuple[int, int]):
        super().__init__()
        first_pad = 3 if tuple(image_size) == (28, 28) else 1  # as dm_core's ConvNet: 28x28 handled as 32x32
        self.blocks, self.heads, self.depths = nn.ModuleList(), nn.ModuleDict(), tuple(space.depth)
        size, cin = tuple(image_size), channels
        for index in range(max(space.depth)):
            self.blocks.append(_Block(cin, width, first_pad if index == 0 else 1, size, space, pool))
            size, cin = self.blocks[-1].out_size, width
            if index + 1 in space.depth:
                self.heads[str(index + 1)] = nn.Linear(width * size[0] * size[1], num_classes)
        self.depth = InputChoice(len(self.depths), 1, label="depth") if len(self.depths) > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if str(index + 1) in self.heads:
                outputs[index + 1] = self.heads[str(index + 1)](x.flatten(1))
        candidates = [outputs[d] for d in self.depths]
        return candidates[0] if self.depth is None else self.depth(candidates)


class ConvNetSupernet(ModelSpace):
    """The ConvNet space with open choices, for NNI's one-shot strategies (see the module docstring)."""

    def __init__(self, space: SearchSpace, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        self.space = space
        self.body = _choice("width", {
            str(w): _choice("pool", {p: _Trunk(space, w, p, channels, num_classes, image_size) for p in space.pool})
            for w in space.width})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def spec(self, sample: dict) -> ConvNetSpec:
        """The ConvNetSpec of a sample of this supernet: an export (depth: a list of one index) or a memo of
        ``resample`` (depth: the index itself)."""
        depth = sample.get("depth")
        if isinstance(depth, int) and not isinstance(depth, bool):
            sample = {**sample, "depth": [depth]}
        return spec_from_sample(sample, self.space)


@dataclass(frozen=True)
class Selection:
    spec: ConvNetSpec
    seconds: float  # supernet training and selection
    reused: bool


def select_architecture(plan: SearchPlan, data: SearchData, task: TrainTask) -> Selection:
    """Train the supernet on the proxy with the one-shot strategy and return its architecture (or the recorded one)."""
    supernet_epochs = plan.config.oneshot_epochs or plan.epochs
    book = Table(plan.run.path / "oneshot.csv", ONESHOT)
    key = {"strategy": plan.strategy.name, "proxy": task.label, "budget": task.budget, "seed": plan.config.seed,
           "supernet_epochs": supernet_epochs}
    for row in book.read().to_dict("records"):
        if all(row[k] == v for k, v in key.items()):
            return Selection(spec_from_sample(_sample_of(row["arch"])), float(row["seconds"]), True)

    start = time.perf_counter()
    spec = _search(plan, data, task, supernet_epochs)
    seconds = time.perf_counter() - start
    book.append({**key, "arch": spec.name, "seconds": seconds})
    return Selection(spec, seconds, False)


def _sample_of(name: str) -> dict:
    """The sample of a ``ConvNetSpec.name`` (convnet-d2-w32-relu-none-avgpool); ConvNetSpec.parse reads 'none' only
    as nonorm/nopool."""
    _, depth, width, act, norm, pool = name.split("-")
    return {"depth": int(depth[1:]), "width": int(width[1:]), "act": act, "norm": norm, "pool": pool}


def _search(plan: SearchPlan, data: SearchData, task: TrainTask, supernet_epochs: int) -> ConvNetSpec:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)  # Lightning's banner lines about GPUs and TPUs
    # NNI's one-shot modules draw their architecture weights and paths from torch's global generator.
    torch.manual_seed(plan.config.seed)
    train = data.train
    supernet = ConvNetSupernet(plan.space, train.channels, train.num_classes, train.image_size)
    batch = plan.config.batch_size
    loader = nni.trace(DataLoader)
    shuffle = torch.Generator().manual_seed(plan.config.seed)
    train_loader = loader(TensorDataset(task.x, task.y), batch_size=batch, shuffle=True, generator=shuffle)
    # DARTS-style strategies interleave weight steps on the proxy with architecture steps on validation batches and
    # run an epoch until both loaders are exhausted: each epoch draws as many validation images as the proxy holds
    # (afresh every epoch), so a 100-image proxy is not paired with the whole validation split (MNIST: 6,000 images,
    # 24 architecture steps per weight step).
    val_set = TensorDataset(task.x_val, task.y_val)
    val_sampler = RandomSampler(val_set, num_samples=min(len(task.x), len(val_set)),
                                generator=torch.Generator().manual_seed(plan.config.seed + 1))
    val_loader = loader(val_set, batch_size=batch, sampler=val_sampler)
    accelerator = "gpu" if plan.device.type == "cuda" else "cpu"
    evaluator = Classification(train_dataloaders=train_loader, val_dataloaders=val_loader, max_epochs=supernet_epochs,
                               num_classes=train.num_classes, accelerator=accelerator, devices=1, logger=False,
                               enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                               enable_progress_bar=plan.config.progress)
    strategy = plan.strategy.build(len(plan.space), plan.config.seed)
    engine = SequentialExecutionEngine()
    nni_logger = logging.getLogger("nni")
    level = nni_logger.level
    nni_logger.setLevel(logging.ERROR)  # NNI warns that a DARTS-style run has no separate validation loader: by design
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            strategy.initialize(RawFormatModelSpace.from_model(supernet, evaluator), engine)
            strategy.run()
            if plan.strategy.name == "RandomOneShot":
                return _best_by_inherited_weights(strategy.oneshot_module, supernet, task, plan.device)
            return supernet.spec(next(strategy.list_models()).sample)
    except ImportError as exc:  # ENAS's controller needs tianshou
        raise DMError(f"strategy {plan.strategy.name} cannot start: {exc}") from None
    finally:
        nni_logger.setLevel(level)
        engine.shutdown()


@torch.no_grad()
def _best_by_inherited_weights(module, supernet: ConvNetSupernet, task: TrainTask, device) -> ConvNetSpec:
    """Score every architecture of the space with the supernet's weights on validation images; the best wins."""
    x, y = task.x_val[:RANKING_IMAGES].to(device), task.y_val[:RANKING_IMAGES].to(device)
    module.to(device).eval()
    best, best_acc = None, -1.0
    for spec in supernet.space.specs():
        sample = {"depth": supernet.space.depth.index(spec.depth), "width": str(spec.width), "act": spec.act,
                  "norm": spec.norm, "pool": spec.pool}
        for layer in module.supernet_modules():
            layer.resample(memo=dict(sample))
        acc = (module(x).argmax(1) == y).float().mean().item()
        if acc > best_acc:
            best, best_acc = spec, acc
    return best


def run_oneshot(plan: SearchPlan, data: SearchData, task: TrainTask) -> SearchSummary:
    """Select with the one-shot strategy, then train and score the selection like any trial."""
    selection = select_architecture(plan, data, task)
    result = make_evaluator(plan, task).run(selection.spec)
    return SearchSummary(task.label, [(selection.spec.name, result.score)], 1, plan.run.results,
                         selected_by=plan.strategy.name, budget=task.budget, augment=task.config.strategy)
