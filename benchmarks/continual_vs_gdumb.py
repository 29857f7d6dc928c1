"""Avalanche's own GDumb against ``continual.run --memory random`` and ``--memory dm``, side by side, one process.

    python benchmarks/continual_vs_gdumb.py --data-root /work/shared/data --out runs/continual_vs_gdumb

MNIST, 5 steps of 2 classes, 20 images per class, ConvNet, class orders of seeds 0 and 1 (docs/method.md section 6), the
same network and initial weights (seeded as continual.run's training run 0), the same training images (a fixed
subset of ``--max-train-per-class`` per class), the same number of epochs and SGD settings (lr 0.01, momentum 0.9,
weight decay 5e-4, batch 256, lr x0.1 at half the epochs) and the same Avalanche evaluation (test images of every
class seen so far, after every step). What differs is what each method is:

- ``gdumb``: Avalanche's ``GDumbPlugin`` on ``Naive``: a class-balanced reservoir memory (``ClassBalancedBuffer``
  fixed at 20 per class over 10 classes, so every step has the same per-class budget as the others), the model
  reset to its initial values, trained by Avalanche's loop (a DataLoader, no augmentation; the lr drop by
  Avalanche's ``LRSchedulerPlugin``);
- ``random`` / ``dm``: ``continual.run --memory random|dm`` (its ``run_continual``, the function behind the CLI,
  with the configuration the CLI builds from the same arguments): the memory made by random selection or by DM,
  trained by dm_core's resident-data trainer with DSA augmentation, as in the paper.

Wall and CPU seconds cover memory building, training and evaluation of all 5 steps (data loading excluded, the same
for all). Methods are interleaved per seed. Each finished (method, seed) is a line of OUT/results.jsonl (not redone
when the script runs again); OUT/table.md is the table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dm_core import build_model, load_dataset, make_generator, reinit_  # noqa: E402

METHODS = ("gdumb", "random", "dm")
STEPS, IPC = 5, 20


def run_gdumb(data, seed: int, args) -> list[float]:
    """Avalanche's GDumb (its plugin, buffer, loop and evaluation); the stream accuracy after each step."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin, GDumbPlugin, LRSchedulerPlugin
    from avalanche.training.storage_policy import ClassBalancedBuffer

    from continual import class_order, make_benchmark, training_seed

    benchmark = make_benchmark(data, class_order(seed, data.num_classes), STEPS)
    model = build_model(args.model, data.channels, data.num_classes, data.image_size)
    reinit_(model, make_generator(training_seed(seed, 0), torch.device("cpu")))
    gdumb = GDumbPlugin(mem_size=IPC * data.num_classes)
    gdumb.storage_policy = ClassBalancedBuffer(max_size=IPC * data.num_classes, adaptive_size=False,
                                               total_num_classes=data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    schedule = LRSchedulerPlugin(torch.optim.lr_scheduler.MultiStepLR(optimizer, [args.epochs // 2], 0.1),
                                 reset_scheduler=True, reset_lr=True)
    torch.manual_seed(training_seed(seed, 0))  # Avalanche's DataLoader shuffles from the global generator
    strategy = Naive(model=model, optimizer=optimizer, train_mb_size=256, train_epochs=args.epochs,
                     eval_mb_size=1024, device="cpu", plugins=[gdumb, schedule],
                     evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
    accuracies = []
    for t, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        accuracies.append(float(strategy.eval(benchmark.test_stream[:t + 1])["Top1_Acc_Stream/eval_phase/test_stream"]))
    return accuracies


def run_continual_cli(data, seed: int, method: str, args, scratch: Path) -> list[float]:
    """``continual.run --memory METHOD`` for one class order: the CLI's own config, then its run_continual."""
    from continual.experiment import run_continual
    from continual.results import read_results
    from continual.run import config_from_args, parser

    argv = ["--dataset", "mnist", "--steps", str(STEPS), "--memory", method, "--ipc", str(IPC), "--seeds", str(seed),
            "--repeats", "1", "--epochs", str(args.epochs), "--iterations", str(args.iterations), "--model", args.model,
            "--max-train-per-class", str(args.max_train_per_class), "--option", f"dm.batch_real={args.batch_real}",
            "--device", "cpu", "--out", str(scratch / f"{method}_seed{seed}"), "--no-progress"]
    path = run_continual(config_from_args(parser().parse_args(argv)), data)
    rows = read_results(path).sort_values("step")
    return [float(a) for a in rows["accuracy_fraction"]]


def table(records: list[dict]) -> str:
    lines = ["| memory | final accuracy (%) per seed | mean | wall s per seed | CPU s per seed |",
             "|---|---|---|---|---|"]
    for method in METHODS:
        mine = sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        finals = " / ".join(f"{100 * r['accuracy_fraction'][-1]:.2f}" for r in mine)
        mean = statistics.fmean(100 * r["accuracy_fraction"][-1] for r in mine)
        walls = " / ".join(f"{r['wall_s']:.0f}" for r in mine)
        cpus = " / ".join(f"{r['cpu_s']:.0f}" for r in mine)
        lines.append(f"| {method} | {finals} | {mean:.2f} | {walls} | {cpus} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None, help="folder holding MNIST/ (default: $DM_DATA_ROOT, else ./data)")
    p.add_argument("--out", type=Path, default=Path("runs/continual_vs_gdumb"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="run only these (the table shows every finished one in OUT/results.jsonl)")
    p.add_argument("--epochs", type=int, default=300, help="training epochs after every step (all methods)")
    p.add_argument("--iterations", type=int, default=200, help="DM iterations per step")
    p.add_argument("--batch-real", type=int, default=64, help="DM real images per class and iteration")
    p.add_argument("--max-train-per-class", type=int, default=500)
    p.add_argument("--model", default="convnet-w32")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from continual.config import cap_per_class

    data = cap_per_class(load_dataset("mnist", args.data_root), args.max_train_per_class)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    budget = {k: getattr(args, k) for k in ("epochs", "iterations", "batch_real", "max_train_per_class", "model")}
    with tempfile.TemporaryDirectory(prefix="vs-gdumb-") as scratch:
        for seed in args.seeds:
            for method in args.methods:
                if any(r["method"] == method and r["seed"] == seed and r["budget"] == budget for r in records):
                    continue
                wall, cpu = time.perf_counter(), time.process_time()
                if method == "gdumb":
                    accuracies = run_gdumb(data, seed, args)
                else:
                    accuracies = run_continual_cli(data, seed, method, args, Path(scratch))
                record = {"method": method, "seed": seed, "accuracy_fraction": accuracies,
                          "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
                          "budget": budget, "threads": args.threads}
                records.append(record)
                with log.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"{method} seed {seed}: final {100 * accuracies[-1]:.2f}% in {record['wall_s']} s",
                      file=sys.stderr)
    current = [r for r in records if r["budget"] == budget and r["seed"] in args.seeds]
    text = table(current)
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
