"""The whole protocol of docs/method.md section 6 as one function: ``run_continual(config)``.

For every memory method and class order (seed), the Avalanche benchmark is replayed step by step. At each step the
memory takes the new classes in (built once per (method, seed, step) and kept as a synthetic-set file), the network
goes back to its initial values and is trained from scratch on the whole memory by ``GDumbMemoryPlugin``, and
Avalanche's evaluation plugin measures the accuracy on the test images of every class seen so far and on each seen
test experience. Each finished (method, seed, repeat, step) is a row of ``results.csv`` appended before the next unit
starts, so an interrupted run resumes where it stopped, and several processes can share one run directory.

Run directory::

    OUT/config.json                           the resolved configuration (of the last process started)
    OUT/results.csv                           one row per unit, see continual.results
    OUT/log.txt                               timings per unit and Avalanche's text log of every evaluation
    OUT/logs/csv/METHOD/seedS/repeatR/        Avalanche's CSVLogger files (with --logger csv)
    OUT/logs/tensorboard/METHOD/seedS/repeatR/ Avalanche's TensorboardLogger events (with --logger tensorboard)
    OUT/memory/METHOD/seedS/stepTT.pt         the memory of the classes of step TT (dm_core SyntheticSet)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import time
from pathlib import Path
from typing import TextIO

import torch
from tqdm.auto import tqdm

from dm_core import ImageDataset, TrainConfig, build_model, make_generator, reinit_
from dm_core import resolve_device as check_device  # one device rule, dm_core's
from dm_core.distributed import world
from dm_core.io import work_key, work_lock
from dm_core.many import resolve_workers, run_in_workers

from .benchmark import class_order, make_benchmark
from .config import ContinualConfig, prepare, store_settings
from .memory import CondensedMemory
from .plugin import GDumbMemoryPlugin
from .results import ResultsTable

STREAM_ACCURACY = "Top1_Acc_Stream/eval_phase/test_stream"
EXPERIENCE_ACCURACY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream(?:/Task\d+)?/Exp(\d+)$")


def training_seed(order_seed: int, repeat: int) -> int:
    """Seed of training ``repeat`` of class order ``order_seed`` (kept apart from the memory seeds)."""
    return 100_000 + 100 * order_seed + repeat


class RunLog:
    """Timestamped lines in OUT/log.txt; Avalanche's TextLogger writes into the same open file."""

    def __init__(self, file: TextIO):
        self.file = file

    def __call__(self, message: str) -> None:
        self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self.file.flush()


def make_loggers(names, out: Path, unit: str, log_file: TextIO) -> list:
    """Avalanche's own logger classes: TextLogger into log.txt, CSVLogger and TensorboardLogger under OUT/logs."""
    from avalanche.logging import CSVLogger, InteractiveLogger, TensorboardLogger, TextLogger

    loggers = []
    for name in names:
        if name == "text":
            loggers.append(TextLogger(log_file))
        elif name == "interactive":
            loggers.append(InteractiveLogger())
        elif name == "csv":
            loggers.append(CSVLogger(log_folder=str(out / "logs" / "csv" / unit)))
        elif name == "tensorboard":
            loggers.append(TensorboardLogger(tb_log_dir=str(out / "logs" / "tensorboard" / unit)))
    return loggers


def close_loggers(loggers: list) -> None:
    for logger in loggers:
        if hasattr(logger, "close"):
            logger.close()
        elif hasattr(logger, "writer"):
            logger.writer.close()


def make_strategy(model: torch.nn.Module, plugin: GDumbMemoryPlugin, train_config: TrainConfig,
                  device: torch.device, loggers: list):
    """A plain Avalanche Naive strategy whose epochs and optimiser the plugin's recipe sets (``train_epochs=0``); its
    evaluator measures the training epochs' loss and accuracy and the evaluations' accuracy and loss."""
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    evaluator = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True),
                                 loss_metrics(epoch=True, experience=True, stream=True), loggers=loggers)
    optimizer = torch.optim.SGD(model.parameters(), lr=train_config.lr)  # replaced by the recipe's each experience
    return Naive(model=model, optimizer=optimizer, train_mb_size=train_config.batch_size, train_epochs=0,
                 eval_mb_size=1024, device=device, plugins=[plugin], evaluator=evaluator)


def experience_accuracies(metrics: dict, seen: int) -> list[float]:
    """The accuracy on each test experience 0..seen-1 from Avalanche's metric dictionary."""
    found = {int(m.group(1)): float(v) for k, v in metrics.items() if (m := EXPERIENCE_ACCURACY.match(k))}
    return [found[e] for e in range(seen)]


def run_continual(config: ContinualConfig, data: ImageDataset | None = None) -> Path:
    """Run (or resume) the protocol; returns the path of ``results.csv``."""
    if data is None:
        data = prepare(config)
    out = Path(config.out)
    # an identical command into the same folder (same methods, seeds, repeats, protocol) waits for nothing: it is
    # refused at once, naming this one; other commands into the folder (other methods or seeds) run beside it
    settings = {k: v for k, v in config.to_json().items()
                if k not in ("progress", "threads", "loggers", "device", "workers")}
    with work_lock(out / f".lock-{work_key(settings)}", f"this run of {out}"):
        return _run(config, data, out)


def _run(config: ContinualConfig, data: ImageDataset, out: Path) -> Path:
    store_settings(config)
    device = check_device(config.device)
    table = ResultsTable(out / "results.csv")
    units = [(m, s, r) for m in config.methods for s in config.seeds for r in range(config.repeats)]
    todo = [(m, s, r) for m, s, r in units
            if not all(table.done(m, config.steps, s, r, t) for t in range(config.steps))]
    # a class order's repeats share its memory files: they run one after another, in one worker
    orders: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
    for unit in todo:
        orders.setdefault(unit[:2], []).append(unit)
    count = unit_workers(config, device, len(orders))
    with open(out / "log.txt", "a", encoding="utf-8") as log_file:
        RunLog(log_file)(f"start: {json.dumps(config.to_json())}" + (f" ({count} workers)" if count > 1 else ""))
    if count > 1:
        quiet = dataclasses.replace(config, progress=False)
        tasks = [functools.partial(run_units, quiet, data, group, str(device)) for group in orders.values()]
        bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="continual", disable=not config.progress,
                   dynamic_ncols=True)
        try:
            run_in_workers(tasks, count, on_result=lambda i, done: bar.update(len(done)))
        finally:
            bar.close()
    else:
        run_units(config, data, todo, str(device), skipped=len(units) - len(todo))
    with open(out / "log.txt", "a", encoding="utf-8") as log_file:
        RunLog(log_file)("done")
    return table.path


def unit_workers(config: ContinualConfig, device: torch.device, orders: int) -> int:
    """Class orders run at once: worker processes of one torch thread on a CPU (``auto``: one per core this
    process may use, from ``PROCESS_CORES`` cores on; else 1); one at a time on a GPU, with the interactive logger
    (it draws on this terminal) and under torchrun (its ranks already share the work)."""
    if device.type != "cpu" or "interactive" in config.loggers or orders <= 1 or world().sharded:
        return 1
    return min(resolve_workers(config.workers, device), orders)


def run_units(config: ContinualConfig, data: ImageDataset, units: list[tuple[str, int, int]], device: str,
              skipped: int = 0) -> list[tuple[str, int, int]]:
    """Run (method, seed, repeat) units one after another in this process (a worker's task, or the whole run);
    returns them. Rows, memories and log lines go to the run folder as each step finishes."""
    out = Path(config.out)
    table = ResultsTable(out / "results.csv")
    # the training runs in Avalanche's loop, which is not compiled: --compile is the builders'
    train_config = TrainConfig(epochs=config.epochs, precision=config.precision, compile="off",
                               augment=config.strategy)
    with open(out / "log.txt", "a", encoding="utf-8") as log_file:
        log = RunLog(log_file)
        bar = tqdm(units, initial=skipped, total=skipped + len(units), desc="continual",
                   disable=not config.progress, dynamic_ncols=True)
        for method, seed, repeat in bar:
            bar.set_postfix_str(f"{method} seed {seed} repeat {repeat}")
            table.refresh()  # another process may have finished units meanwhile
            if all(table.done(method, config.steps, seed, repeat, t) for t in range(config.steps)):
                continue
            loggers = make_loggers(config.loggers, out, f"{method}/seed{seed}/repeat{repeat}", log_file)
            try:
                run_order(config, data, method, seed, repeat, table, train_config, torch.device(device), log,
                          loggers)
            finally:
                close_loggers(loggers)
        bar.close()
    return units


def run_order(config: ContinualConfig, data: ImageDataset, method: str, seed: int, repeat: int,
              table: ResultsTable, train_config: TrainConfig, device: torch.device, log: RunLog,
              loggers: list) -> None:
    """One training from scratch (``repeat``) over every step of one class order; skips the steps already in
    ``table``."""
    benchmark = make_benchmark(data, class_order(seed, data.num_classes), config.steps)
    # The stream is already normalised with the dataset's statistics: mean 0 / std 1 leaves it as it is.
    memory = CondensedMemory(method, config.ipc, seed=seed, device=str(device), num_classes=data.num_classes,
                             mean=(0.0,) * data.channels, std=(1.0,) * data.channels, name=data.name,
                             cache_dir=Path(config.out) / "memory" / method / f"seed{seed}", progress=config.progress,
                             **config.builder_options(method))
    model = build_model(config.model, data.channels, data.num_classes, data.image_size)
    reinit_(model, make_generator(training_seed(seed, repeat), torch.device("cpu")))  # the initial values, seeded
    plugin = GDumbMemoryPlugin(memory, seed=training_seed(seed, repeat), train_config=train_config)
    strategy = make_strategy(model, plugin, train_config, device, loggers)
    steps = tqdm(benchmark.train_stream, desc="steps", leave=False, disable=not config.progress,
                 dynamic_ncols=True)
    for experience in steps:
        step = experience.current_experience
        started = time.perf_counter()
        memory.post_adapt(None, experience)  # built, or loaded from its step file; the plugin's call is then a no-op
        built = time.perf_counter()
        if table.done(method, config.steps, seed, repeat, step):
            continue
        strategy.train(experience)
        trained = time.perf_counter()
        metrics = strategy.eval(benchmark.test_stream[:step + 1])
        accuracy, per_experience = float(metrics[STREAM_ACCURACY]), experience_accuracies(metrics, step + 1)
        seen = len(memory.classes())
        written = table.add({"dataset": data.name, "method": method, "steps": config.steps, "ipc": config.ipc,
                             "seed": seed, "repeat": repeat, "step": step, "classes_seen": seen,
                             "accuracy_fraction": accuracy, "experience_accuracy_fraction": per_experience,
                             "precision": config.precision, "augment": config.strategy})
        log(f"{method} seed={seed} repeat={repeat} step={step} classes_seen={seen} accuracy={100 * accuracy:.2f}% "
            f"experiences=[{' '.join(f'{100 * a:.1f}' for a in per_experience)}]% memory_s={built - started:.1f} "
            f"train_s={trained - built:.1f} eval_s={time.perf_counter() - trained:.1f}"
            + ("" if written else " (already recorded by another process)"))
        steps.set_postfix_str(f"acc {100 * accuracy:.1f}%")
    steps.close()


def final_accuracies(config: ContinualConfig, table: ResultsTable) -> dict:
    """{method: mean accuracy (%) after the last step over this configuration's seeds and repeats}."""
    rows = table.rows
    rows = rows[(rows["step"] == config.steps - 1) & rows["method"].isin(config.methods)
                & rows["seed"].isin(config.seeds) & (rows["repeat"] < config.repeats) & (rows["steps"] == config.steps)]
    means = (100 * rows["accuracy_fraction"]).groupby(rows["method"], sort=False).mean()
    return {method: round(float(mean), 2) for method, mean in means.items()}
