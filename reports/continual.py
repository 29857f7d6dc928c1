"""Figures 6 and 7 of DM (continual learning) and the table of final accuracies, from results CSVs only.

    python -m reports continual RESULTS.csv [RUN_DIR ...] --out DIR

Each input is a ``results.csv`` written by ``python -m continual.run`` (or a run directory holding one). For every
(dataset, steps) found it draws test accuracy against the number of classes seen, one curve per memory method, the
mean over class orders x training runs with a +-1 std band, and -- for CIFAR-100, the paper's setting -- the paper's
final accuracies as markers (PROTOCOL.md section 6). 5 steps -> figure6.{png,pdf}, 10 steps -> figure7.{png,pdf}.
It also writes final_accuracy.md and final_accuracy.csv. Nothing is trained here.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from dm_core import DMError, atomic_write_bytes, atomic_write_text

from . import report_cli

METHOD_ORDER = ("dm", "dsa", "herding", "random")
LABELS = {"dm": "DM", "dsa": "DSA", "herding": "Herding", "random": "Random"}
COLORS = {"dm": "tab:red", "dsa": "tab:blue", "herding": "tab:green", "random": "tab:gray"}
# DM paper, section 3.5: final test accuracy (%) at 100 classes, CIFAR-100, 20 images per class.
PAPER_FINAL = {5: {"dm": 34.4, "dsa": 31.7, "herding": 28.2, "random": 24.8},
               10: {"dm": 34.6, "dsa": 30.5, "herding": 27.4, "random": 24.8}}
PAPER_DATASET = "cifar100"
FIGURE_NUMBER = {5: 6, 10: 7}
INT_FIELDS = ("steps", "ipc", "seed", "run", "step", "classes_seen")
REQUIRED = ("dataset", "method", "steps", "seed", "run", "step", "classes_seen", "accuracy")


def load_rows(paths: list[Path]) -> list[dict]:
    """Typed rows of every results file (a CSV path, or a run directory holding results.csv); duplicates dropped."""
    rows, seen = [], set()
    for path in paths:
        path = path / "results.csv" if path.is_dir() else path
        if not path.is_file():
            raise DMError(f"no results file at {path}")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
            if missing:
                raise DMError(f"{path} is not a continual results file (missing {', '.join(missing)})")
            for row in reader:
                typed = {**row, **{k: int(row[k]) for k in INT_FIELDS if k in row},
                         "accuracy": 100 * float(row["accuracy"])}
                key = tuple(typed.get(k) for k in ("dataset", "method", "steps", "ipc", "seed", "run", "step"))
                if key not in seen:
                    seen.add(key)
                    rows.append(typed)
    if not rows:
        raise DMError("the results files hold no rows")
    return rows


def summarise(rows: list[dict]) -> dict:
    """{(dataset, steps): {method: [(classes_seen, mean %, std %, n), ...]}}: mean and std over orders x runs."""
    groups: dict = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["steps"], r["method"], r["classes_seen"])].append(r["accuracy"])
    summary: dict = defaultdict(lambda: defaultdict(list))
    for (dataset, steps, method, seen), values in sorted(groups.items()):
        summary[(dataset, steps)][method].append((seen, float(np.mean(values)), float(np.std(values)), len(values)))
    return summary


def ordered(methods) -> list[str]:
    return sorted(methods, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))


def figure_name(dataset: str, steps: int, datasets: set[str]) -> str:
    base = f"figure{FIGURE_NUMBER[steps]}" if steps in FIGURE_NUMBER else f"figure_steps{steps}"
    return base if len(datasets) == 1 else f"{base}_{dataset.replace(':', '_').replace('/', '_')}"


def plot(curves: dict, dataset: str, steps: int, ipc: str, reference: bool, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.9), dpi=150)
    for method in ordered(curves):
        points = curves[method]
        x = np.array([p[0] for p in points])
        mean, std = np.array([p[1] for p in points]), np.array([p[2] for p in points])
        n = min(p[3] for p in points)
        color = COLORS.get(method)
        ax.plot(x, mean, marker="o", ms=3.5, color=color, label=f"{LABELS.get(method, method)} (n={n})")
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)
        if reference and method in PAPER_FINAL.get(steps, {}):
            ax.plot([x.max()], [PAPER_FINAL[steps][method]], marker="*", ms=11, color=color, mec="black", mew=0.6,
                    ls="none")
    if reference:
        ax.plot([], [], marker="*", ms=9, color="white", mec="black", ls="none", label="paper, final")
    ax.set_xlabel("number of classes seen")
    ax.set_ylabel("test accuracy on seen classes (%)")
    ax.set_title(f"{dataset}, {steps} steps, {ipc} images per class (mean \u00b1 std)", fontsize=9)
    xs = sorted({p[0] for pts in curves.values() for p in pts})
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    written = []
    for suffix in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=suffix)
        written.append(atomic_write_bytes(stem.with_suffix(f".{suffix}"), buffer.getvalue()))
    plt.close(fig)
    return written


def final_table(summary: dict, ipcs: dict) -> tuple[str, str]:
    """(markdown, csv) of the accuracy after the last step, with the paper's number where it applies."""
    header = ["dataset", "steps", "ipc", "method", "classes", "n", "final_accuracy_mean", "final_accuracy_std",
              "paper"]
    lines = []
    for (dataset, steps), curves in sorted(summary.items()):
        for method in ordered(curves):
            seen, mean, std, n = curves[method][-1]
            paper = PAPER_FINAL.get(steps, {}).get(method) if dataset == PAPER_DATASET else None
            lines.append([dataset, steps, ipcs[(dataset, steps)], method, seen, n, f"{mean:.2f}", f"{std:.2f}",
                          "" if paper is None else f"{paper:.1f}"])
    md = ["| dataset | steps | ipc | method | classes | n | final accuracy (%) | paper (%) |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {d} | {s} | {i} | {LABELS.get(m, m)} | {c} | {n} | {mean} \u00b1 {std} | {p or '-'} |"
           for d, s, i, m, c, n, mean, std, p in lines]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(lines)
    return "\n".join(md) + "\n", buffer.getvalue()


def make_report(paths: list[Path], out: Path, reference: str = "auto") -> list[Path]:
    rows = load_rows(paths)
    summary = summarise(rows)
    datasets = {d for d, _ in summary}
    ipcs: dict = defaultdict(set)
    for r in rows:
        ipcs[(r["dataset"], r["steps"])].add(str(r.get("ipc", "?")))
    ipcs = {k: "/".join(sorted(v)) for k, v in ipcs.items()}
    written = []
    for (dataset, steps), curves in sorted(summary.items()):
        draw = reference == "always" or (reference == "auto" and dataset == PAPER_DATASET)
        stem = out / figure_name(dataset, steps, datasets)
        written += plot(curves, dataset, steps, ipcs[(dataset, steps)], draw and steps in PAPER_FINAL, stem)
    md, table = final_table(summary, ipcs)
    written.append(atomic_write_text(out / "final_accuracy.md", md))
    written.append(atomic_write_text(out / "final_accuracy.csv", table))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports continual", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="results.csv files or run directories")
    p.add_argument("--out", type=Path, default=Path("reports/continual"), help="folder for figures and tables")
    p.add_argument("--paper-reference", choices=("auto", "always", "never"), default="auto",
                   help="mark the paper's final accuracies (auto: only for CIFAR-100, the paper's setting)")
    args = p.parse_args(argv)
    return report_cli(lambda: make_report(args.results, args.out, args.paper_reference))


if __name__ == "__main__":
    sys.exit(main())
