"""The MNIST table (random / herding / DSA / DM at 1 and 10 images per class), made with the CLI, at a stated budget.

    python benchmarks/mnist_table.py --data-root ../shared/data --out runs/mnist_table --device cpu

Every cell is two CLI calls, ``python -m dm_core condense ...`` then ``python -m dm_core evaluate ...``; their JSON
lines are kept in OUT/results.jsonl (a finished cell is not redone when the script is run again) and the Markdown
table, with the paper's Table 1 row beside it, is written to OUT/table.md. The budget flags default to a CPU-sized
setting; ``--paper`` uses the paper's (ConvNet width 128, 256 real images per class, DM 20,000 iterations, DSA 1,000,
1,000 training epochs, 20 networks).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PAPER = {  # Table 1 of DM, MNIST, ConvNet (PROTOCOL.md section 4)
    ("random", 1): 64.9, ("herding", 1): 89.2, ("dsa", 1): 88.7, ("dm", 1): 89.7,
    ("random", 10): 95.1, ("herding", 10): 93.7, ("dsa", 10): 97.8, ("dm", 10): 97.5,
}
METHODS = ("random", "herding", "dsa", "dm")


def cli(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "dm_core", *args, "--no-progress"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: python -m dm_core {' '.join(args)}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/mnist_table"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--paper", action="store_true", help="the paper's budgets (for a GPU)")
    parser.add_argument("--model", default="convnet-w32")
    parser.add_argument("--batch-real", type=int, default=64)
    parser.add_argument("--dm-iterations", type=int, default=300)
    parser.add_argument("--dsa-iterations", type=int, nargs=2, default=[200, 10], metavar=("IPC1", "IPC10"))
    parser.add_argument("--herding-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--models", type=int, default=3)
    args = parser.parse_args(argv)
    if args.paper:
        args.model, args.batch_real, args.dm_iterations = "convnet", 256, 20_000
        args.dsa_iterations, args.herding_epochs, args.epochs, args.models = [1000, 1000], 30, 1000, 20

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    done = {(r["method"], r["ipc"]): r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    common = ["--dataset", "mnist", "--device", args.device] + (["--data-root", args.data_root] if args.data_root
                                                                  else [])
    for ipc in (1, 10):
        for method in METHODS:
            if (method, ipc) in done:
                continue
            out = args.out / f"mnist_{method}_ipc{ipc}.pt"
            condense = ["condense", *common, "--method", method, "--ipc", str(ipc), "--out", str(out)]
            if method != "random":
                condense += ["--model", args.model]
            if method == "herding":
                condense += ["--herding-epochs", str(args.herding_epochs)]
            if method in ("dm", "dsa"):
                iterations = args.dm_iterations if method == "dm" else args.dsa_iterations[ipc != 1]
                condense += ["--iterations", str(iterations), "--batch-real", str(args.batch_real)]
            made = cli(condense)
            scored = cli(["evaluate", str(out), *common[2:], "--model", args.model, "--epochs", str(args.epochs),
                          "--models", str(args.models)])
            row = {"method": method, "ipc": ipc, "condense_seconds": made["wall_seconds"], **scored,
                   "condense_command": "python -m dm_core " + " ".join(condense)}
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[(method, ipc)] = row
            print(f"{method} ipc={ipc}: {row['mean']:.1f} +- {row['std']:.1f}", flush=True)

    lines = ["| ipc | method | this run (mean +- std %) | paper Table 1 | condense s | evaluate s |",
             "|---|---|---|---|---|---|"]
    for ipc in (1, 10):
        for method in METHODS:
            r = done[(method, ipc)]
            lines.append(f"| {ipc} | {method} | {r['mean']:.1f} +- {r['std']:.1f} | {PAPER[(method, ipc)]} | "
                         f"{r['condense_seconds']:.0f} | {r['seconds']:.0f} |")
    budget = (f"model {args.model}; real batch {args.batch_real}/class; DM {args.dm_iterations} iterations; DSA "
              f"{args.dsa_iterations[0]} (ipc 1) / {args.dsa_iterations[1]} (ipc 10) outer iterations; herding "
              f"features from {args.herding_epochs} epochs; evaluation {args.models} networks x {args.epochs} epochs, "
              f"full MNIST test set; device {args.device}")
    (args.out / "table.md").write_text("\n".join(lines) + f"\n\nBudget: {budget}\n")
    print("\n".join(lines) + f"\n\nBudget: {budget}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
