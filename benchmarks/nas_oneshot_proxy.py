"""Does a DM proxy help one-shot search? DARTS / GumbelDARTS / RandomOneShot on the ``tiny`` space (24 ConvNets),
supernet trained on a dm10 or a random10 proxy, the selected architecture scored against a whole-data ground truth.

    OMP_NUM_THREADS=1 python benchmarks/nas_oneshot_proxy.py --dataset digits --out runs/nas_oneshot_digits
    OMP_NUM_THREADS=1 python benchmarks/nas_oneshot_proxy.py --dataset mnist --data-root DIR \
        --out runs/nas_oneshot_mnist \
        --groundtruth reports/nas_mnist/run/groundtruth.csv

Both proxies are made once (seed 0; DM: 100 iterations, 64 real images per class, as in reports/nas_mnist) and reused
for every one-shot seed through ``--proxy-file``, so the seeds vary only the supernet training and the trials. Without
``--groundtruth`` the 24 architectures are trained on the whole training split (``--groundtruth-steps``, 1 repeat);
with a ground truth of part of the space (reports/nas_mnist holds 7 of the 24), the selected architectures it lacks
are trained the same way, and ranks are among the architectures with a ground truth.
Prints one Markdown table and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from dm_core import ConvNetSpec
from nas.data import load_search_data
from nas.groundtruth import GroundTruthConfig, run_groundtruth
from nas.plan import SearchConfig, prepare_task
from nas.search import run_search

PROXY_OPTIONS = {"dm10": dict(iterations=100, batch_real=64), "random10": {}}


def ground_truth(path: Path) -> dict[str, float]:
    """Whole-split test accuracy (fraction) of each tiny-space architecture (column test_acc or test_acc_fraction)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    column = "test_acc_fraction" if "test_acc_fraction" in rows[0] else "test_acc"
    by_arch: dict[str, list[float]] = {}
    for row in rows:
        by_arch.setdefault(row["arch"], []).append(float(row[column]))
    return {arch: statistics.fmean(v) for arch, v in by_arch.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--groundtruth", default=None, help="a groundtruth.csv of the tiny space on this dataset")
    p.add_argument("--out", default="runs/nas_oneshot_digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--strategies", default="DARTS,GumbelDARTS,RandomOneShot")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--oneshot-epochs", type=int, default=100)
    p.add_argument("--epochs", type=int, default=50, help="proxy training of the selected architecture")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--groundtruth-steps", type=int, default=200,
                   help="SGD steps (batch 250) of a ground-truth training on the whole training split: at least "
                        "one epoch (MNIST: 216, as reports/nas_mnist)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    common = dict(dataset=args.dataset, data_root=args.data_root, space="tiny", epochs=args.epochs,
                  repeats=args.repeats, device="cpu", out=args.out, progress=False)
    files = {}
    data = load_search_data(args.dataset, args.data_root, 0.1, 0)
    SearchConfig(**common).resolve().run.claim(data.train.name, 0, 0.1)
    for proxy, options in PROXY_OPTIONS.items():  # make (or load) each proxy once, with seed 0
        start = time.perf_counter()
        _, cost = prepare_task(SearchConfig(proxy=proxy, **options, **common).resolve(), data, progress=False)
        files[proxy] = Path(cost["file"])
        print(f"proxy {proxy}: {files[proxy]} ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    rows = []
    for strategy in args.strategies.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for proxy, options in PROXY_OPTIONS.items():
                start = time.perf_counter()
                summary = run_search(SearchConfig(proxy=proxy, strategy=strategy, seed=seed, **options, **common,
                                                  oneshot_epochs=args.oneshot_epochs, proxy_file=str(files[proxy])))
                arch, val = summary.best
                rows.append(dict(strategy=strategy, seed=seed, proxy=proxy, arch=arch, proxy_val=100 * val,
                                 seconds=time.perf_counter() - start))
                print(json.dumps(rows[-1]), file=sys.stderr)
    if args.groundtruth is None:
        run_groundtruth(GroundTruthConfig(out=args.out, all=True, space="tiny",
                                          train_iterations=args.groundtruth_steps, repeats=1, device="cpu",
                                          data_root=args.data_root, progress=False))
        truth = ground_truth(Path(args.out) / "groundtruth.csv")
    else:  # a ground truth of part of the space: the selected architectures it lacks are trained the same way
        truth = ground_truth(Path(args.groundtruth))
        for arch in sorted({r["arch"] for r in rows} - set(truth)):
            spec = ConvNetSpec.parse(arch)
            fields = f"depth={spec.depth};width={spec.width};act={spec.act};norm={spec.norm};pool={spec.pool}"
            run_groundtruth(GroundTruthConfig(out=args.out, all=True, space=fields,
                                              train_iterations=args.groundtruth_steps, repeats=1, device="cpu",
                                              data_root=args.data_root, progress=False))
        if (Path(args.out) / "groundtruth.csv").exists():
            truth.update(ground_truth(Path(args.out) / "groundtruth.csv"))
    best = max(truth.values())
    for row in rows:
        # rank among the architectures with a ground truth (whole-data test accuracy); ties share the best rank
        row.update(truth=100 * truth[row["arch"]], rank=1 + sum(v > truth[row["arch"]] for v in truth.values()))
    print(f"| strategy | seed | proxy | selected | val. acc. trained on proxy (%) | whole-data test acc. (%) | "
          f"rank of {len(truth)} |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['seed']} | {r['proxy']} | {r['arch']} | {r['proxy_val']:.2f} | "
              f"{r['truth']:.2f} | {r['rank']} |")
    means = {proxy: {"truth": statistics.fmean(r["truth"] for r in rows if r["proxy"] == proxy),
                     "rank": statistics.fmean(r["rank"] for r in rows if r["proxy"] == proxy)}
             for proxy in PROXY_OPTIONS}
    for proxy, m in means.items():
        print(f"{proxy}: mean whole-data test accuracy of the selections {m['truth']:.2f}%, mean rank {m['rank']:.1f}")
    print(json.dumps({"rows": rows, "means": means, "ranked_among": len(truth), "best": 100 * best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
