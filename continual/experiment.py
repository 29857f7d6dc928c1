"""The whole protocol of PROTOCOL.md section 6 as one function: ``run_continual(config)``.

For every memory method and class order (seed), the Avalanche benchmark is replayed step by step. At each step the
memory gets the new classes (built once per (method, seed, step) and kept as a synthetic-set file), a network is
re-initialised and trained from scratch on the whole memory by ``GDumbMemoryPlugin``, and Avalanche's evaluation
plugin measures the accuracy on the test images of every class seen so far. Each finished (method, seed, run, step)
is a row of ``results.csv`` written before the next unit starts, so an interrupted run resumes where it stopped.

Run directory::

    OUT/config.json                           the resolved configuration
    OUT/results.csv                           dataset, method, steps, ipc, seed, run, step, classes_seen, accuracy
    OUT/log.txt                               timings per unit and Avalanche's text log of every evaluation
    OUT/memory/METHOD/seedS/stepTT.pt         the new classes' memory of step TT (dm_core SyntheticSet)
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TextIO

import torch
from tqdm.auto import tqdm

from dm_core import ImageDataset, TrainConfig, atomic_write_text, build_model, resolve_device

from .benchmark import class_order, make_benchmark
from .config import CONFIG_FILE, ContinualConfig, prepare
from .memory import CondensedMemory, MemoryBuilder
from .plugin import GDumbMemoryPlugin
from .results import ResultsTable

STREAM_ACCURACY = "Top1_Acc_Stream/eval_phase/test_stream"


def training_seed(order_seed: int, run: int) -> int:
    """Seed of training run ``run`` of class order ``order_seed`` (kept apart from the memory seeds)."""
    return 100_000 + 100 * order_seed + run


class RunLog:
    """Timestamped lines in OUT/log.txt; Avalanche's TextLogger writes into the same open file."""

    def __init__(self, file: TextIO):
        self.file = file

    def __call__(self, message: str) -> None:
        self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self.file.flush()


def make_strategy(model: torch.nn.Module, plugin: GDumbMemoryPlugin, train_config: TrainConfig,
                  device: torch.device, log_file: TextIO):
    """A plain Avalanche Naive strategy that runs no epochs of its own: the plugin trains, Avalanche evaluates."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.logging import TextLogger
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[TextLogger(log_file)])
    optimizer = torch.optim.SGD(model.parameters(), lr=train_config.lr)  # unused: train_epochs=0
    return Naive(model=model, optimizer=optimizer, train_mb_size=train_config.batch_size, train_epochs=0,
                 eval_mb_size=1024, device=device, plugins=[plugin], evaluator=evaluator)


def run_continual(config: ContinualConfig, data: ImageDataset | None = None) -> Path:
    """Run (or resume) the protocol; returns the path of ``results.csv``."""
    if data is None:
        data = prepare(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, json.dumps(config.to_json(), indent=2) + "\n")
    device = resolve_device(config.device)
    table = ResultsTable(out / "results.csv")
    train_config = TrainConfig(epochs=config.epochs)
    units = [(m, s, r) for m in config.methods for s in config.seeds for r in range(config.runs)]
    with open(out / "log.txt", "a", encoding="utf-8") as log_file:
        log = RunLog(log_file)
        log(f"start: {json.dumps(config.to_json())}")
        bar = tqdm(units, desc="continual", disable=not config.progress, dynamic_ncols=True)
        for method, seed, run in bar:
            bar.set_postfix_str(f"{method} seed {seed} run {run}")
            if all(table.done(method, config.steps, seed, run, t) for t in range(config.steps)):
                continue
            builder = MemoryBuilder(method, config.ipc, data, seed=seed, device=str(device),
                                    options=config.builder_options(method),
                                    cache_dir=out / "memory" / method / f"seed{seed}", progress=config.progress)
            run_order(config, data, builder, run, table, train_config, device, log)
        bar.close()
        log("done")
    return table.path


def run_order(config: ContinualConfig, data: ImageDataset, builder: MemoryBuilder, run: int, table: ResultsTable,
              train_config: TrainConfig, device: torch.device, log: RunLog) -> None:
    """One training run over every step of one class order; skips the steps already in ``table``."""
    method, seed = builder.method, builder.seed
    order = class_order(seed, data.num_classes)
    benchmark = make_benchmark(data, order, config.steps)
    memory = CondensedMemory(builder)
    model = build_model(config.model, data.channels, data.num_classes, data.image_size)
    plugin = GDumbMemoryPlugin(memory, seed=training_seed(seed, run), train_config=train_config,
                               progress=config.progress)
    strategy = make_strategy(model, plugin, train_config, device, log.file)
    steps = tqdm(benchmark.train_stream, desc="steps", leave=False, disable=not config.progress,
                 dynamic_ncols=True)
    for experience in steps:
        step = experience.current_experience
        started = time.perf_counter()
        memory.post_adapt(None, experience)  # built, or loaded from its step file; the plugin's call is then a no-op
        built = time.perf_counter()
        if table.done(method, config.steps, seed, run, step):
            continue
        strategy.train(experience)
        trained = time.perf_counter()
        accuracy = float(strategy.eval(benchmark.test_stream[:step + 1])[STREAM_ACCURACY])
        seen = len(memory.memories)
        table.add({"dataset": data.name, "method": method, "steps": config.steps, "ipc": config.ipc, "seed": seed,
                   "run": run, "step": step, "classes_seen": seen, "accuracy": accuracy})
        log(f"{method} seed={seed} run={run} step={step} classes_seen={seen} accuracy={accuracy:.4f} "
            f"memory_s={built - started:.1f} train_s={trained - built:.1f} "
            f"eval_s={time.perf_counter() - trained:.1f}")
        steps.set_postfix_str(f"acc {accuracy:.3f}")
    steps.close()
