"""Why benchmarks/continual_vs_gdumb.py trains 300 epochs: at 100, DSA augmentation underfits a 20-per-class memory.

    python benchmarks/augmentation_epochs.py --data-root /work/shared/data

Two random 20-images-per-class MNIST sets (the final GDumb memory of the benchmark: 10 classes, 200 images, so one
SGD step per epoch at batch 256), each trained from scratch by dm_core's trainer with ConvNet width 32 in four ways,
3 training seeds each; prints the mean test accuracy per set and way.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from continual.config import cap_per_class
from dm_core import TrainConfig, load_dataset, make_set, train_and_test

WAYS = {"augmented, 100 epochs": TrainConfig(epochs=100),
        "not augmented, 100 epochs": TrainConfig(epochs=100, augment="none"),
        "augmented, 300 epochs": TrainConfig(epochs=300),
        "augmented, 100 epochs, batch 64": TrainConfig(epochs=100, batch_size=64)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = cap_per_class(load_dataset("mnist", args.data_root), 500)
    print("| training | set | test accuracy per seed (%) | mean (%) | seconds |\n|---|---|---|---|---|")
    for selection in (0, 1):
        memory = make_set("random", data, 20, seed=selection, device="cpu", progress=False)
        for name, config in WAYS.items():
            start = time.perf_counter()
            accuracies = [100 * train_and_test(memory.images, memory.labels, data, model="convnet-w32", config=config,
                                               seed=seed, device="cpu") for seed in range(3)]
            print(f"| {name} | {selection} | {' / '.join(f'{a:.2f}' for a in accuracies)} | "
                  f"{statistics.fmean(accuracies):.2f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
