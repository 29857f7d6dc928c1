"""Estimate the wall time of the paper's NAS protocol (720 ConvNets x 5 repeats) on this machine, without data.

    OMP_NUM_THREADS=1 python benchmarks/nas_cost.py --device cpu --calibrate 6 --batch 25

Training cost of a ConvNet is close to linear in its multiply-accumulates (MACs) per image. The script counts the MACs
of all 720 architectures on CIFAR-10-shaped inputs (3 x 32 x 32, 10 classes), times ``dm_core.train_model`` (SGD with
DSA, as in every trial) for ``--calibrate`` architectures spread over the MAC range at batch ``--batch`` (slope
between a 1-step and a ``1 + --steps``-step run, so set-up is not counted), interpolates seconds per step linearly in
MACs between them, and scales to batch 250 (linear in the batch). It extrapolates:

- a proxy search: per architecture 400 steps (200 epochs x 2 batches of a 500-image set) + validation on 5,000
  images, x 5 repeats, x 720 (also the early-stopping proxy, which runs the same number of steps);
- the whole-data search: 100 epochs x 180 steps (45,000 images) + validation, x 5 repeats, x 720;
- the ground truth for 36 architectures (one top 5%) of mean cost at the whole-data budget, x 5 repeats.

Evaluation is timed on 1,000 images per calibration architecture and interpolated the same way. Prints a Markdown table
and one JSON line. Random tensors stand in for images: the cost does not depend on pixel values.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dm_core import ConvNetSpec, TrainConfig, build_model, evaluate_accuracy, reinit_, resolve_device, train_model
from nas.space import NAMED_SPACES

PAPER = {"proxy_steps": 400, "whole_steps": 100 * 180, "repeats": 5, "val_images": 5000, "test_images": 10000,
         "groundtruth_archs": 36, "batch": 250}


def macs_per_image(spec: ConvNetSpec, channels: int = 3, size: int = 32, classes: int = 10) -> int:
    """Forward multiply-accumulates of one image (convs and classifier; norms and activations are negligible)."""
    total, cin = 0, channels
    for _ in range(spec.depth):
        total += size * size * cin * spec.width * 9
        cin = spec.width
        if spec.pool != "none":
            size //= 2
    return total + cin * size * size * classes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_architecture(spec: ConvNetSpec, batch: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds per training step at ``batch``, seconds per evaluated image)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    model = build_model(spec, 3, 10, (32, 32))

    def train(n: int):
        reinit_(model.cpu(), torch.Generator().manual_seed(0))
        train_model(model, x, y, TrainConfig(batch_size=batch, iterations=n), seed=0, device=device)

    one = seconds(lambda: train(1), device)
    many = seconds(lambda: train(1 + steps), device)
    x_eval, y_eval = torch.randn(1000, 3, 32, 32, generator=g), torch.randint(0, 10, (1000,), generator=g)
    evaluate_accuracy(model, x_eval[:64], y_eval[:64], device=device)  # warm-up
    per_image = seconds(lambda: evaluate_accuracy(model, x_eval, y_eval, device=device), device) / 1000
    return max(many - one, 1e-9) / steps, per_image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--calibrate", type=int, default=6, help="architectures timed (spread over the MAC range)")
    p.add_argument("--batch", type=int, default=25, help="batch size timed (scaled linearly to 250)")
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args(argv)
    device = resolve_device(args.device)

    specs = NAMED_SPACES["full"].specs()
    macs = np.array([macs_per_image(s) for s in specs], dtype=float)
    order = np.argsort(macs)
    picks = [specs[order[i]] for i in np.linspace(0, len(specs) - 1, args.calibrate).round().astype(int)]
    rows = []
    for spec in picks:
        step, per_image = time_architecture(spec, args.batch, args.steps, device)
        rows.append((spec.name, macs_per_image(spec), step, per_image))
        print(f"| {spec.name} | {macs_per_image(spec) / 1e6:.1f} MMAC | {step:.3f} s/step @ {args.batch} | "
              f"{1000 * per_image:.3f} ms/eval image |", flush=True)

    # Piecewise-linear in MACs between the calibration points (which include the cheapest and the dearest
    # architecture), so small nets are not charged the fixed costs a global linear fit would give them.
    cal_macs = np.array([r[1] for r in rows], dtype=float)
    step_250 = np.interp(macs, cal_macs, [r[2] for r in rows]) * PAPER["batch"] / args.batch
    eval_img = np.interp(macs, cal_macs, [r[3] for r in rows])

    proxy_trial = PAPER["proxy_steps"] * step_250 + PAPER["val_images"] * eval_img
    whole_trial = PAPER["whole_steps"] * step_250 + PAPER["val_images"] * eval_img
    gt_trial = whole_trial + PAPER["test_images"] * eval_img
    estimate = {
        "device": str(device), "threads": torch.get_num_threads(), "calibration": rows,
        "batch_timed": args.batch,
        "proxy_trial_seconds_mean": float(proxy_trial.mean()),
        "whole_trial_seconds_mean": float(whole_trial.mean()),
        "proxy_search_hours": float(proxy_trial.sum() * PAPER["repeats"] / 3600),
        "whole_search_hours": float(whole_trial.sum() * PAPER["repeats"] / 3600),
        "groundtruth_36_hours": float(gt_trial.mean() * PAPER["groundtruth_archs"] * PAPER["repeats"] / 3600),
    }
    print()
    print("| part | mean seconds per trial | total (720 x 5 repeats) |")
    print("|---|---|---|")
    print(f"| proxy search (random/DSA/DM/early: 400 steps) | {estimate['proxy_trial_seconds_mean']:.0f} | "
          f"{estimate['proxy_search_hours']:.0f} h |")
    print(f"| whole-data search (100 epochs) | {estimate['whole_trial_seconds_mean']:.0f} | "
          f"{estimate['whole_search_hours']:.0f} h |")
    print(f"| ground truth, 36 architectures of mean cost x 5 | {gt_trial.mean():.0f} | "
          f"{estimate['groundtruth_36_hours']:.0f} h |")
    print(json.dumps(estimate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
