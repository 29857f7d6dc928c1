"""What do NNI's assessors save, and what do they cost in ranking quality? digits, ``tiny`` space (24 ConvNets).

    OMP_NUM_THREADS=1 python benchmarks/nas_assessor.py --out runs/nas_assessor

Three in-process searches with the same seeds (random10 proxy, 20 epochs, 2 repeats, validation accuracy after every
epoch): no assessor, ``--assessor Medianstop`` (NNI's defaults: judged from the first point) and
``--assessor Curvefitting`` (NNI's defaults: from the 6th point, threshold 0.95). The ground truth trains all 24 on the
whole training split (200 steps, 1 repeat). Compute is counted in epochs of proxy training (a stopped trial counts the
epochs it ran); the top-k Spearman is the paper's (top 25% by validation accuracy; proxy-trained test accuracy vs
whole-data test accuracy). Prints a Markdown table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from nas.analysis import mean_scores, rank, top_k_spearman
from nas.assessor import CurveStore
from nas.groundtruth import GroundTruthConfig, run_groundtruth
from nas.results import read_records
from nas.search import SearchConfig, run_search

EPOCHS, REPEATS = 20, 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/nas_assessor")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    truth = None
    for assessor in (None, "Medianstop", "Curvefitting"):
        out = Path(args.out) / (assessor or "none")
        start = time.perf_counter()
        summary = run_search(SearchConfig(dataset="digits", space="tiny", proxy="random10", epochs=EPOCHS,
                                          repeats=REPEATS, device="cpu", out=str(out), progress=False,
                                          report_every=1, assessor=assessor))
        wall = time.perf_counter() - start
        if truth is None:
            run_groundtruth(GroundTruthConfig(out=str(out), all=True, space="tiny", train_iterations=200, repeats=1,
                                              device="cpu", progress=False))
            truth = mean_scores(read_records(out / "groundtruth.csv"), "test_acc")
        records = [r for r in read_records(summary.results) if r.arch in dict(summary.ranking)]
        curves = CurveStore(out / "curves.csv").curves()
        stopped_epochs = sum(len(c.val_acc) * c.every for c in curves if c.status == "stopped")
        epochs = len(records) * EPOCHS + stopped_epochs
        val, test = mean_scores(records, "val_acc"), mean_scores(records, "test_acc")
        top = top_k_spearman(val, test, truth, fraction=0.25)
        best = rank(val)[0]
        rows.append(dict(assessor=assessor or "none", stopped=summary.stopped, ranked=summary.trials,
                         epochs=epochs, saved=100 * (1 - epochs / (24 * REPEATS * EPOCHS)), k=len(top.archs),
                         spearman=top.rho, best=best, best_truth=100 * truth[best], wall_seconds=wall))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print("| assessor | stopped of 24 | proxy epochs trained | compute saved | top-k Spearman (k) | selected "
          "| its whole-data test acc. | wall |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['assessor']} | {r['stopped']} | {r['epochs']} | {r['saved']:.0f}% | {r['spearman']:.2f} "
              f"({r['k']}) | {r['best']} | {r['best_truth']:.1f}% | {r['wall_seconds']:.0f} s |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
