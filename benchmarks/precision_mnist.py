"""Does bf16 training give the accuracy of fp32? DM sets of the MNIST table cells, each evaluated in both precisions.

    python benchmarks/precision_mnist.py --data-root DATA --out runs/precision_mnist --device cpu

For 1 and 10 images per class: one DM set (``python -m dm_core condense --method dm``, fp32, a reduced budget), then
``python -m dm_core evaluate`` of that set with ``--precision fp32`` and with ``--precision bf16``. Both evaluations
train networks from the same seeds (seed .. seed + repeats - 1), so model i of fp32 and model i of bf16 start from the
same weights and see the same batches and augmentations: the per-model difference is a paired comparison. Every CLI
JSON line is kept in OUT/results.jsonl (a finished call is not redone); the table goes to stdout and OUT/table.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mnist_table import cli  # this script's folder is on sys.path when it runs


def percent(row: dict) -> dict:
    """mean, std and accuracies (percent) of an evaluate JSON line, whichever version wrote it."""
    return {k: row.get(f"{k}_percent", row.get(k)) for k in ("mean", "std", "accuracies")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/precision_mnist"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="convnet-w32")
    parser.add_argument("--batch-real", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=200, help="DM iterations per set")
    parser.add_argument("--epochs", type=int, nargs=2, default=[300, 150], metavar=("IPC1", "IPC10"))
    parser.add_argument("--repeats", type=int, default=5, help="networks trained per set and precision")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    done = {r["key"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}

    def once(key: str, command: list[str]) -> dict:
        if key not in done:
            row = {"key": key, "command": "python -m dm_core " + " ".join(command), **cli(command)}
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[key] = row
            shown = {k: row[k] for k in ("mean_percent", "accuracies_percent", "seconds") if k in row}
            print(f"{key}: {json.dumps(shown)}",
                  flush=True)
        return done[key]

    common = ["--dataset", "mnist", "--device", args.device]
    common += ["--data-root", args.data_root] if args.data_root else []
    lines = ["| ipc | epochs | fp32 (mean +- std %) | bf16 (mean +- std %) | bf16 - fp32, paired (mean +- std, "
             "points) | fp32 s | bf16 s |", "|---|---|---|---|---|---|---|"]
    for ipc, epochs in zip((1, 10), args.epochs):
        out = args.out / f"mnist_dm_ipc{ipc}.pt"
        once(f"condense ipc{ipc}", ["condense", *common, "--method", "dm", "--ipc", str(ipc), "--model", args.model,
                                    "--iterations", str(args.iterations), "--batch-real", str(args.batch_real),
                                    "--out", str(out)])
        scores = {p: once(f"evaluate ipc{ipc} {p}", ["evaluate", str(out), *common[2:], "--model", args.model,
                                                      "--epochs", str(epochs), "--repeats", str(args.repeats),
                                                      "--precision", p]) for p in ("fp32", "bf16")}
        scores = {p: percent(row) for p, row in scores.items()}  # rows written before the keys said their unit too
        diffs = [b - a for a, b in zip(scores["fp32"]["accuracies"], scores["bf16"]["accuracies"])]
        cells = [f"{scores[p]['mean']:.1f} +- {scores[p]['std']:.1f}" for p in ("fp32", "bf16")]
        spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        lines.append(f"| {ipc} | {epochs} | {cells[0]} | {cells[1]} | {statistics.fmean(diffs):+.2f} +- {spread:.2f} "
                     f"| {scores['fp32']['seconds']:.0f} | {scores['bf16']['seconds']:.0f} |")
    budget = (f"DM sets: {args.model}, {args.iterations} iterations, {args.batch_real} real images/class; evaluation: "
              f"{args.repeats} {args.model} networks per precision, full MNIST test set, device {args.device}")
    text = "\n".join(lines) + f"\n\n{budget}\n"
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
