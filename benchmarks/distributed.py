"""Wall time of DM condensation and evaluation in 1 process against N processes under torchrun (gloo on the CPU,
NCCL on CUDA), with the same seed and flags; also checks that the sets and accuracies are identical.

    python benchmarks/distributed.py --nproc 2 --device cpu            # this project's 2-core machine
    python benchmarks/distributed.py --nproc 8 --device cuda --dataset cifar10 --iterations 200 --batch-real 256

Each configuration is run ``--repeats`` times, alternating 1 and N processes, and the median wall time (process start
included, as a user sees it) is printed. On the CPU each process gets ``cores / N`` torch threads, and the single
process all the cores, so the comparison is at equal hardware.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], threads: int, cwd: Path) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--batch-real", type=int, default=64)
    p.add_argument("--model", default="convnet-w32")
    p.add_argument("--models", type=int, default=4, help="networks trained by evaluate")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    data = ["--dataset", args.dataset] + (["--data-root", args.data_root] if args.data_root else [])
    condense = ["condense", *data, "--method", "dm", "--ipc", str(args.ipc), "--iterations", str(args.iterations),
                "--batch-real", str(args.batch_real), "--model", args.model, "--device", args.device, "--no-progress"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc), "--master-addr",
                "127.0.0.1", "--master-port", "29541", "-m", "dm_core"]
    single = [sys.executable, "-m", "dm_core"]
    threads_one = cores if args.device == "cpu" else 1
    threads_many = max(1, cores // args.nproc) if args.device == "cpu" else 1
    times: dict[str, list[float]] = {"condense 1": [], f"condense {args.nproc}": [], "evaluate 1": [],
                                     f"evaluate {args.nproc}": []}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for _ in range(args.repeats):
            t1, _ = run(single + condense + ["--out", "one.pt"], threads_one, cwd)
            tn, _ = run(torchrun + condense + ["--out", "many.pt"], threads_many, cwd)
            times["condense 1"].append(t1)
            times[f"condense {args.nproc}"].append(tn)
            evaluate = ["evaluate", "one.pt", "--epochs", str(args.epochs), "--models", str(args.models), "--model",
                        args.model, "--device", args.device, "--no-progress"]
            e1, r1 = run(single + evaluate, threads_one, cwd)
            en, rn = run(torchrun + evaluate, threads_many, cwd)
            times["evaluate 1"].append(e1)
            times[f"evaluate {args.nproc}"].append(en)
        a = torch.load(cwd / "one.pt", weights_only=True)["images"]
        b = torch.load(cwd / "many.pt", weights_only=True)["images"]
        same_set = float((a - b).abs().max())
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {cores} cores"
    print(f"device: {device}; median of {args.repeats} alternating runs, wall seconds including process start")
    print(f"DM: {args.dataset}, ipc {args.ipc}, {args.iterations} iterations, batch_real {args.batch_real}, "
          f"{args.model}; evaluate: {args.models} models x {args.epochs} epochs")
    print(f"| job | 1 process (s) | {args.nproc} processes (s) | speed-up |")
    print("|---|---|---|---|")
    for job in ("condense", "evaluate"):
        one, many = statistics.median(times[f"{job} 1"]), statistics.median(times[f"{job} {args.nproc}"])
        print(f"| {job} | {one:.1f} | {many:.1f} | {one / many:.2f}x |")
    print(f"max |set(1) - set({args.nproc})| = {same_set:.2e}; "
          f"accuracies equal: {r1['accuracies'] == rn['accuracies']}")


if __name__ == "__main__":
    main()
