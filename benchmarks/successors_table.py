"""DM and its successors (M3D, IDM, DataDAM, decomposed DM) at equal budgets: the table of docs/successors.md.

    python benchmarks/successors_table.py --dataset digits --out runs/successors_digits
    python benchmarks/successors_table.py --dataset mnist --data-root ../shared/data --out runs/successors_mnist

Every method condenses with the same network, iteration count, real batch per class and seed, and every set is
evaluated the same way (the same network trained from scratch ``--repeats`` times, ``--epochs`` epochs, on the whole
test set); everything else is each method's own default (the authors', docs/successors.md). A method may carry
options after a colon, e.g. ``idm:factor=1``. ``--previous FILE`` (an earlier results.jsonl) puts its accuracies beside
the new ones. Each finished cell is one JSON line of
OUT/results.jsonl (a finished cell is not redone when the script runs again); OUT/table.md is the Markdown table.
Wall time per iteration is the condensation's own clock (``meta["seconds"]`` / iterations) on this machine, with
``torch`` at the threads given by ``--threads``; on a shared machine it swings with the load, so
``--timing-iterations N`` also runs every cell's condensation for N iterations alone and records the process's CPU
time per iteration (OUT/timing.jsonl), which other processes do not inflate.
"""
from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import torch

from dm_core import TrainConfig, atomic_write_text, evaluate_set, load_dataset, make_set

METHODS = ("dm", "m3d", "idm", "datadam", "ddm")


def parse_method(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return name, options


def cell(args, data, spec: str, ipc: int) -> dict:
    method, extra = parse_method(spec)
    synset = make_set(method, data, ipc, seed=args.seed, device=args.device, progress=False, model=args.model,
                      iterations=args.iterations, batch_real=args.batch_real, **extra)
    evaluation = evaluate_set(synset, data, args.model, args.repeats, TrainConfig(epochs=args.epochs), args.seed,
                              args.device, progress=False)
    return {"dataset": data.name, "method": spec, "ipc": ipc,
            "images_per_class": len(synset) // data.num_classes,
            "model": args.model, "iterations": args.iterations, "batch_real": args.batch_real,
            "epochs": args.epochs, "repeats": args.repeats, "threads": args.threads,
            "condense_seconds": synset.meta["seconds"],
            "ms_per_iteration": round(1000 * synset.meta["seconds"] / max(args.iterations, 1), 1),
            "mean": round(100 * evaluation.mean, 2), "std": round(100 * evaluation.std, 2),
            "accuracies": [round(100 * a, 2) for a in evaluation.accuracies],
            "evaluate_seconds": round(evaluation.seconds, 1),
            "settings": {k: v for k, v in synset.meta.items() if k in ("lr_img", "factor", "augment", "model")}}


def timing(args, data, spec: str, ipc: int) -> dict:
    """CPU time per iteration of ``spec``'s condensation (this process only), over ``--timing-iterations``."""
    method, extra = parse_method(spec)
    started, cpu = time.perf_counter(), time.process_time()
    make_set(method, data, ipc, seed=args.seed, device=args.device, progress=False, model=args.model,
             iterations=args.timing_iterations, batch_real=args.batch_real, **extra)
    n = args.timing_iterations
    return {"method": spec, "ipc": ipc, "timing_iterations": n, "threads": args.threads,
            "cpu_ms_per_iteration": round(1000 * (time.process_time() - cpu) / n, 1),
            "wall_ms_per_iteration": round(1000 * (time.perf_counter() - started) / n, 1)}


def table(rows: list[dict], timings: dict | None = None, previous: dict | None = None) -> str:
    timings, previous = timings or {}, previous or {}
    lines = ["| ipc | method | images/class trained on | accuracy % (mean +- std) | before | vs DM "
             "| wall ms / iteration | CPU ms / iteration |", "|---|---|---|---|---|---|---|---|"]
    for ipc in sorted({r["ipc"] for r in rows}):
        dm = next((r["mean"] for r in rows if r["ipc"] == ipc and r["method"] == "dm"), None)
        for r in (r for r in rows if r["ipc"] == ipc):
            delta = "" if dm is None or r["method"] == "dm" else f"{r['mean'] - dm:+.1f}"
            cpu = timings.get((r["method"], ipc), {}).get("cpu_ms_per_iteration")
            old = previous.get((r["method"], ipc))
            before = "-" if old is None else f"{old['mean']:.1f} +- {old['std']:.1f}"
            lines.append(f"| {ipc} | {r['method']} | {r['images_per_class']} | {r['mean']:.1f} +- {r['std']:.1f} | "
                         f"{before} | {delta} | {r['ms_per_iteration']:.0f} | {'-' if cpu is None else f'{cpu:.0f}'} |")
    r = rows[0]
    lines.append("")
    lines.append(f"Budget: {r['dataset']}, model {r['model']}, {r['iterations']} iterations, {r['batch_real']} real "
                 f"images per class per iteration, evaluation {r.get('repeats', r.get('models'))} networks x "
                 f"{r['epochs']} epochs; {r['threads']} CPU thread(s).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/successors_digits"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="NAME or NAME:key=value,...")
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--model", default="convnet-w32")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batch-real", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="networks trained on each set")
    parser.add_argument("--previous", type=Path, help="an earlier results.jsonl, shown beside the new accuracies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing-iterations", type=int, default=0,
                        help="also time every cell's condensation alone for this many iterations (CPU time)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["method"], r["ipc"]) for r in rows}
    data = load_dataset(args.dataset, args.data_root)
    for ipc in args.ipc:
        for spec in args.methods:
            if (spec, ipc) in done:
                continue
            started = time.perf_counter()
            row = cell(args, data, spec, ipc)
            rows.append(row)
            atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in rows))
            print(f"{spec} ipc {ipc}: {row['mean']:.2f} +- {row['std']:.2f} % "
                  f"({row['ms_per_iteration']:.0f} ms/iteration, {time.perf_counter() - started:.0f} s)", flush=True)
    timing_log = args.out / "timing.jsonl"
    timed = [json.loads(line) for line in timing_log.read_text().splitlines()] if timing_log.exists() else []
    if args.timing_iterations > 0:
        # one-off costs (lazy imports on the first optimiser, first-touch allocations) must not land on a cell
        make_set("dm", data, 1, device=args.device, progress=False, model=args.model, iterations=2)
        for ipc in args.ipc:
            for spec in args.methods:
                if not any(t["method"] == spec and t["ipc"] == ipc for t in timed):
                    timed.append(timing(args, data, spec, ipc))
                    atomic_write_text(timing_log, "".join(json.dumps(t) + "\n" for t in timed))
    order = {spec: i for i, spec in enumerate(args.methods)}
    rows.sort(key=lambda r: (r["ipc"], order.get(r["method"], len(order))))
    previous = {}
    if args.previous is not None:
        previous = {(r["method"], r["ipc"]): r for r in map(json.loads, args.previous.read_text().splitlines())}
    text = table(rows, {(t["method"], t["ipc"]): t for t in timed}, previous)
    atomic_write_text(args.out / "table.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
