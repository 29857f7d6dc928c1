"""Figures 6 and 7 of DM (continual learning), the accuracy matrices and forgetting, from results CSVs only.

    python -m reports continual RUN [RUN ...] --out DIR

Each RUN is a run folder of ``python -m continual.run`` (or the ``results.csv`` in it), read through continual's
results schema (``continual.results.SCHEMA``; files of earlier versions included). A unit recorded twice, in one
file or in two, is refused with one error line naming both places. For every (dataset, steps) found it draws test
accuracy against the number of classes seen, one curve per memory method, the mean over class orders x repeats
(trainings from scratch) with a +-1 std band, and -- for CIFAR-100, the paper's setting -- the paper's
final accuracies as markers (docs/method.md section 6). 5 steps -> figure6.{png,pdf}, 10 steps -> figure7.{png,pdf}.
Beside each figure, FIGURE_matrix.{png,pdf} shows every method's accuracy matrix (row t: after step t; column e:
accuracy on the test images of experience e), with its average forgetting in the title. It also writes
final_accuracy.md / final_accuracy.csv (final accuracy and average forgetting per method) and accuracy_matrix.md.
All accuracies are in percent. Nothing is trained here.

Average forgetting (Chaudhry et al. 2018) of one class order and repeat, after the last step T: the mean over the
experiences e < T of max_{e <= t < T} a[t][e] - a[T][e], in percentage points; mean and std over orders x repeats.
Rows from results files older than the per-experience column have no matrix and no forgetting.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from dm_core import DMError, atomic_write_bytes, atomic_write_text
from dm_core.shell import exit_process

METHOD_ORDER = ("dm", "dsa", "herding", "random")
# the paper's four methods, then DM's successors (docs/successors.md); any other method gets its name and a free colour
LABELS = {"dm": "DM", "dsa": "DSA", "herding": "Herding", "random": "Random", "m3d": "M3D", "idm": "IDM",
          "datadam": "DataDAM", "ddm": "Decomposed DM"}
COLORS = {"dm": "tab:red", "dsa": "tab:blue", "herding": "tab:green", "random": "tab:gray", "m3d": "tab:purple",
          "idm": "tab:brown", "datadam": "tab:orange", "ddm": "tab:pink"}
# DM paper, section 3.5: final test accuracy (%) at 100 classes, CIFAR-100, 20 images per class.
PAPER_FINAL = {5: {"dm": 34.4, "dsa": 31.7, "herding": 28.2, "random": 24.8},
               10: {"dm": 34.6, "dsa": 30.5, "herding": 27.4, "random": 24.8}}
PAPER_DATASET = "cifar100"
FIGURE_NUMBER = {5: 6, 10: 7}


def load_rows(paths: list[Path]):
    """The rows of every results file (a CSV path, or a run directory holding results.csv) as one DataFrame, read
    through continual's results schema (files of earlier versions included), with the accuracies in percent
    (``accuracy_percent``, ``experience_accuracy_percent``). A unit recorded twice, in one file or in two, is refused
    naming both places: one of the two would otherwise silently win."""
    from continual.results import read_many

    files = [path / "results.csv" if path.is_dir() else path for path in paths]
    rows = read_many(files)
    if not len(rows):
        raise DMError("the results files hold no rows")
    rows["accuracy_percent"] = 100 * rows["accuracy_fraction"]
    rows["experience_accuracy_percent"] = [[100 * v for v in values] if values else []
                                           for values in rows["experience_accuracy_fraction"]]
    return rows


def matrices(rows) -> dict:
    """{(dataset, steps, method): {(seed, repeat): steps x steps array}} of the units whose every step has its
    per-experience accuracies (NaN above the diagonal)."""
    found: dict = defaultdict(dict)
    with_matrix = rows[rows["experience_accuracy_percent"].map(len) > 0]
    for (dataset, steps, method, seed, repeat), unit in with_matrix.groupby(
            ["dataset", "steps", "method", "seed", "repeat"], sort=True):
        if unit["step"].nunique() == steps:
            matrix = np.full((steps, steps), np.nan)
            for t, values in zip(unit["step"], unit["experience_accuracy_percent"]):
                matrix[t, :t + 1] = values
            found[(dataset, steps, method)][(seed, repeat)] = matrix
    return found


def average_forgetting(matrix: np.ndarray) -> float:
    """Mean over experiences e < T of (best accuracy on e before the last step) - (accuracy on e after it)."""
    last = matrix.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean([matrix[e:last, e].max() - matrix[last, e] for e in range(last)]))


def summarise(rows) -> dict:
    """{(dataset, steps): {method: [(classes_seen, mean %, std %, n), ...]}}: mean and std over orders x repeats."""
    stats = rows.groupby(["dataset", "steps", "method", "classes_seen"], sort=True)["accuracy_percent"].agg(
        mean="mean", std=lambda v: float(np.std(v)), n="count")
    summary: dict = defaultdict(lambda: defaultdict(list))
    for (dataset, steps, method, seen), row in stats.iterrows():
        summary[(dataset, steps)][method].append((seen, float(row["mean"]), float(row["std"]), int(row["n"])))
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
    return save_figure(fig, stem)


def save_figure(fig, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    written = []
    for suffix in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=suffix)
        written.append(atomic_write_bytes(stem.with_suffix(f".{suffix}"), buffer.getvalue()))
    plt.close(fig)
    return written


def forgetting_summary(units: dict) -> tuple[float, float, int]:
    """(mean, std, n) of the average forgetting over the units (class orders x repeats) of one method."""
    values = [average_forgetting(m) for m in units.values()]
    return float(np.mean(values)), float(np.std(values)), len(values)


def plot_matrices(found: dict, dataset: str, steps: int, stem: Path) -> list[Path]:
    """One heatmap per method: mean accuracy (%) on experience e (column) after step t (row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ordered(m for d, s, m in found if (d, s) == (dataset, steps))
    fig, axes = plt.subplots(1, len(methods), figsize=(2.6 * len(methods) + 0.6, 2.9), dpi=150, squeeze=False)
    for ax, method in zip(axes[0], methods):
        units = found[(dataset, steps, method)]
        mean = np.mean(np.stack(list(units.values())), axis=0)
        forgetting, spread, n = forgetting_summary(units)
        image = ax.imshow(mean, vmin=0, vmax=100, cmap="viridis")
        for t in range(steps):
            for e in range(t + 1):
                if steps <= 10:
                    ax.text(e, t, f"{mean[t, e]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if mean[t, e] < 60 else "black")
        ax.set_title(f"{LABELS.get(method, method)} (n={n})\nforgetting {forgetting:.1f}\u00b1{spread:.1f}", fontsize=7)
        ax.set_xlabel("test experience", fontsize=7)
        ax.set_ylabel("after step", fontsize=7)
        ax.set_xticks(range(steps))
        ax.set_yticks(range(steps))
        ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="accuracy (%)")
    return save_figure(fig, stem)


def final_table(summary: dict, ipcs: dict, found: dict) -> tuple[str, str]:
    """(markdown, csv) of the accuracy after the last step and the average forgetting, with the paper's final
    accuracy where it applies."""
    header = ["dataset", "steps", "ipc", "method", "classes", "n", "final_accuracy_mean", "final_accuracy_std",
              "forgetting_mean", "forgetting_std", "paper"]
    lines = []
    for (dataset, steps), curves in sorted(summary.items()):
        for method in ordered(curves):
            seen, mean, std, n = curves[method][-1]
            paper = PAPER_FINAL.get(steps, {}).get(method) if dataset == PAPER_DATASET else None
            units = found.get((dataset, steps, method))
            forgetting = [f"{v:.2f}" for v in forgetting_summary(units)[:2]] if units else ["", ""]
            lines.append([dataset, steps, ipcs[(dataset, steps)], method, seen, n, f"{mean:.2f}", f"{std:.2f}",
                          *forgetting, "" if paper is None else f"{paper:.1f}"])
    md = ["| dataset | steps | ipc | method | classes | n | final accuracy (%) | avg forgetting (points) | paper (%) |",
          "|---|---|---|---|---|---|---|---|---|"]
    pm = "\u00b1"
    md += [f"| {d} | {s} | {i} | {LABELS.get(m, m)} | {c} | {n} | {mean} {pm} {std} | "
           f"{f'{fm} {pm} {fs}' if fm else '-'} | {p or '-'} |"
           for d, s, i, m, c, n, mean, std, fm, fs, p in lines]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(lines)
    return "\n".join(md) + "\n", buffer.getvalue()


def matrix_markdown(found: dict) -> str:
    """Every method's mean accuracy matrix (%) as a Markdown table, with its average forgetting."""
    parts = ["# Accuracy matrices (%): row = after step t, column = test experience e; mean over orders x repeats\n"]
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    for (dataset, steps, method), units in sorted(found.items(),
                                                  key=lambda kv: (kv[0][:2], rank.get(kv[0][2], 99), kv[0][2])):
        mean = np.mean(np.stack(list(units.values())), axis=0)
        forgetting, spread, n = forgetting_summary(units)
        parts.append(f"## {dataset}, {steps} steps, {LABELS.get(method, method)} (n = {n}): average forgetting "
                     f"{forgetting:.2f} \u00b1 {spread:.2f} points\n")
        parts.append("| after step | " + " | ".join(f"exp {e}" for e in range(steps)) + " |")
        parts.append("|---" * (steps + 1) + "|")
        for t in range(steps):
            cells = [f"{mean[t, e]:.1f}" if e <= t else "" for e in range(steps)]
            parts.append(f"| {t} | " + " | ".join(cells) + " |")
        parts.append("")
    if len(parts) == 1:
        parts.append("No results file holds per-experience accuracies (written before that column existed).\n")
    return "\n".join(parts)


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DMError(f"--out {out} is a file: give a folder for the figures and tables")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DMError(f"cannot write into {existing}: give a writable --out folder")


def make_report(paths: list[Path], out: Path, reference: str = "auto") -> list[Path]:
    check_out(out)
    rows = load_rows(paths)
    summary = summarise(rows)
    found = matrices(rows)
    datasets = {d for d, _ in summary}
    ipcs = {key: "/".join(sorted({str(v) for v in values}))
            for key, values in rows.groupby(["dataset", "steps"])["ipc"]}
    written = []
    for (dataset, steps), curves in sorted(summary.items()):
        draw = reference == "always" or (reference == "auto" and dataset == PAPER_DATASET)
        stem = out / figure_name(dataset, steps, datasets)
        written += plot(curves, dataset, steps, ipcs[(dataset, steps)], draw and steps in PAPER_FINAL, stem)
        if any((d, s) == (dataset, steps) for d, s, _ in found):
            written += plot_matrices(found, dataset, steps, stem.with_name(stem.name + "_matrix"))
    md, table = final_table(summary, ipcs, found)
    written.append(atomic_write_text(out / "final_accuracy.md", md))
    written.append(atomic_write_text(out / "final_accuracy.csv", table))
    written.append(atomic_write_text(out / "accuracy_matrix.md", matrix_markdown(found)))
    return written


HELP = "Figures 6 and 7, accuracy matrices and final accuracies from continual results"
DESCRIPTION = ("Draw test accuracy against the classes seen (Figures 6 and 7), each method's accuracy matrix, and the "
               "final-accuracy table, from results.csv files of continual.run (or the run folders holding them).")


def add_arguments(p) -> None:
    p.add_argument("results", type=Path, nargs="+", metavar="RUN", help="run folders of continual.run, or their "
                   "results.csv files")
    p.add_argument("--out", type=Path, default=Path("reports/continual"), help="folder for the figures and tables")
    p.add_argument("--paper-reference", choices=("auto", "always", "never"), default="auto",
                   help="mark the paper's final accuracies (auto: only on CIFAR-100, the paper's setting)")


def make(args) -> list[Path]:
    return make_report(args.results, args.out, args.paper_reference)


def main(argv: list[str] | None = None) -> int:
    """``python -m reports continual ...``."""
    from .cli import main as reports_main

    return reports_main(["continual", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    exit_process(main())
