"""Table 5 (CSV + Markdown) and Figure F8 of DM section 3.6 from a NAS run directory's result files; never trains.

    python -m reports nas runs/nas --out reports/nas_cifar10 [--top-fraction 0.05]

Inputs: ``results.csv`` (nas.search), ``groundtruth.csv`` (nas.groundtruth), ``run.json`` (proxy sizes and costs),
read through the records layer (``nas.results.TRIALS``): a damaged file, or two rows of one training (which would be
averaged in as another repeat), is refused with one line naming the rows.
Outputs, accuracies in percent: ``table5.csv`` (one row per method, with the paper's numbers beside the run's),
``table5.md`` (the paper's layout: one column per method, the paper's values in their own rows) and ``figure_f8.png``
(one panel per proxy, shared axes: for each of its top architectures by proxy validation accuracy, x = test accuracy
trained on the proxy, y = test accuracy trained on the whole training split, error bars = std over repeats, y = x).
"""
from __future__ import annotations

import csv
import io
import math
import sys
from collections import Counter
from pathlib import Path

from dm_core import DMError, atomic_write_bytes, atomic_write_text
from dm_core.shell import exit_process
from nas.analysis import GROUNDTRUTH_LABEL, TOP_FRACTION, MethodSummary, mean_scores, std_scores, summarize_run
from nas.results import read_trials
from nas.rundir import RunDir

from .cli import main as reports_main

# DM paper, Table 5 (CIFAR-10, 720 ConvNets, top 5%, one V100): docs/method.md section 7.
PAPER_TABLE5 = {
    "Random": {"performance": 84.0, "correlation": -0.04, "minutes": 142.6, "storage": "500"},
    "DSA": {"performance": 82.6, "correlation": 0.68, "minutes": 142.6, "storage": "500"},
    "DM": {"performance": 82.8, "correlation": 0.76, "minutes": 142.6, "storage": "500", "make_minutes": 72.0},
    "Early-stopping": {"performance": 84.3, "correlation": 0.11, "minutes": 142.6, "storage": "5x10^4"},
    "Whole": {"performance": 85.9, "correlation": 1.00, "minutes": 3580.2, "storage": "5x10^4"},
}
PAPER_COLUMN = (("random", "Random"), ("dsa", "DSA"), ("dm", "DM"), ("early", "Early-stopping"), ("whole", "Whole"))

CSV_COLUMNS = ("method", "budget", "precision", "architectures", "top_k", "spearman_top_k", "spearman_all",
               "with_truth", "selected", "selected_proxy_val_percent", "selected_proxy_test_percent",
               "selected_whole_test_percent", "search_minutes", "make_minutes", "storage_images",
               "paper_column", "paper_performance_percent", "paper_spearman_top5", "paper_minutes")


def paper_column(method: str) -> str | None:
    """The paper's Table 5 column a run's method corresponds to (None for herding and custom sets)."""
    for prefix, column in PAPER_COLUMN:
        if method.startswith(prefix):
            return column
    return None


def load_run(run_dir: Path, fraction: float) -> tuple[list[MethodSummary], dict[str, float], dict[str, float], dict]:
    """(summaries, whole-data test accuracy by architecture, its std over repeats, run.json)."""
    run = RunDir(run_dir)
    info = run.info()
    results = read_trials(run.results)
    if not len(results):
        raise DMError(f"no search results in {run.results}: run python -m nas.search --out {run_dir} first")
    groundtruth = read_trials(run.groundtruth)
    if len(groundtruth):  # one training budget for the ground truth: the most common one
        budget = Counter(groundtruth["budget"]).most_common(1)[0][0]
        groundtruth = groundtruth[groundtruth["budget"] == budget]
    summaries = summarize_run(results, groundtruth, info.get("proxies", {}), fraction)
    return summaries, mean_scores(groundtruth, "test_acc"), std_scores(groundtruth, "test_acc"), info


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _rho(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def _paper(method: str, key: str):
    return PAPER_TABLE5.get(paper_column(method) or "", {}).get(key)


def table_csv(summaries: list[MethodSummary]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for s in summaries:
        percent = [round(100 * v, 2) if not math.isnan(v) else math.nan
                   for v in (s.selected_proxy_val, s.selected_proxy_test, s.selected_whole_test)]
        paper = [_paper(s.method, key) for key in ("performance", "correlation", "minutes")]
        writer.writerow([s.method, s.budget, s.precision, s.architectures, s.top_k, round(s.spearman_top_k, 4),
                         round(s.spearman_all, 4), s.with_truth, s.selected, *percent, round(s.search_minutes, 2),
                         round(s.make_minutes, 2), s.storage_images, paper_column(s.method) or "",
                         *["" if v is None else v for v in paper]])
    return buffer.getvalue()


def table_markdown(summaries: list[MethodSummary], info: dict, fraction: float) -> str:
    def paper(key: str, fmt) -> list[str]:
        return [fmt(v) if (v := _paper(s.method, key)) is not None else "-" for s in summaries]

    head = "| | " + " | ".join(s.method for s in summaries) + " |"
    rows = [
        ("Performance (%)", [_pct(s.selected_whole_test) for s in summaries]),
        ("Performance, paper (%)", paper("performance", lambda v: f"{v:.1f}")),
        (f"Correlation (top {100 * fraction:g}%)", [f"{_rho(s.spearman_top_k)} (k={s.top_k})" for s in summaries]),
        ("Correlation, paper (top 5%)", paper("correlation", lambda v: f"{v:.2f}")),
        ("Correlation (all ranked with a ground truth)", [f"{_rho(s.spearman_all)} (n={s.with_truth})"
                                                          for s in summaries]),
        ("Time (min)", [f"{s.search_minutes:.1f}" for s in summaries]),
        ("Time, paper (min, one V100)", paper("minutes", lambda v: f"{v:.1f}")),
        ("Proxy making (min)", [f"{s.make_minutes:.1f}" for s in summaries]),
        ("Proxy making, paper (min)", paper("make_minutes", lambda v: f"{v:.0f}")),
        ("Storage (images)", [str(s.storage_images) for s in summaries]),
        ("Storage, paper (images)", paper("storage", str)),
        ("Architectures ranked", [str(s.architectures) for s in summaries]),
        ("Training budget", [s.budget for s in summaries]),
        ("Precision", [s.precision for s in summaries]),
        ("Selected", [f"`{s.selected}`" for s in summaries]),
        ("Selected: proxy validation / test (%)",
         [f"{_pct(s.selected_proxy_val)} / {_pct(s.selected_proxy_test)}" for s in summaries]),
    ]
    lines = [f"Table 5 ({info.get('dataset', '?')}): performance = whole-data test accuracy of the architecture each "
             f"method selects (its best by proxy validation accuracy); correlation = Spearman rho, over the method's "
             f"top {100 * fraction:g}% by proxy validation accuracy, of the test accuracy trained on the proxy vs the "
             f"test accuracy trained on the whole training split. Paper rows: DM Table 5 (CIFAR-10, 720 ConvNets, "
             f"full budgets), for orientation.", "", head, "|---" * (len(summaries) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines) + "\n"


def figure_f8(summaries: list[MethodSummary], truth: dict[str, float], truth_std: dict[str, float],
              path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = draw_f8(summaries, truth, truth_std)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def draw_f8(summaries: list[MethodSummary], truth: dict[str, float], truth_std: dict[str, float]):
    """The matplotlib figure of F8: one panel per proxy (not the ground truth's own column), shared square axes."""
    import matplotlib  # here: only the figure needs it, and the Agg backend must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [s for s in summaries if s.method != GROUNDTRUTH_LABEL]  # its x and y are the same numbers
    points = {s.method: [(100 * s.proxy_test[a], 100 * s.proxy_test_std.get(a, 0.0), 100 * truth[a],
                          100 * truth_std.get(a, 0.0), a == s.selected) for a in s.top if a in truth]
              for s in panels}
    ends = [v for pts in points.values() for x, dx, y, dy, _ in pts for v in (x - dx, x + dx, y - dy, y + dy)]
    low, high = (min(ends), max(ends)) if ends else (0.0, 100.0)
    pad = max(0.5, 0.05 * (high - low))
    limits = (max(0.0, low - pad), min(100.0, high + pad))
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n + 0.4, 3.6), squeeze=False, sharex=True, sharey=True)
    for ax, s in zip(axes[0], panels):
        ax.plot(limits, limits, ls="--", lw=0.8, color="0.5", label="y = x")
        pts = points[s.method]
        if pts:
            xs, dxs, ys, dys, chosen = zip(*pts)
            ax.errorbar(xs, ys, xerr=dxs, yerr=dys, fmt="o", ms=4, color="tab:blue", ecolor="tab:blue",
                        elinewidth=0.8, alpha=0.85, label=f"top {s.top_k}")
            for x, y, c in zip(xs, ys, chosen):
                if c:
                    ax.scatter([x], [y], s=90, facecolor="none", edgecolor="tab:red", label="selected", zorder=3)
        else:
            ax.text(0.5, 0.5, "no ground truth yet", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        reference = _paper(s.method, "correlation")
        ax.set_title(f"{s.method}: rho={_rho(s.spearman_top_k)}, k={s.top_k}"
                     + (f"\n(paper {paper_column(s.method)}: {reference:.2f})" if reference is not None else ""),
                     fontsize=8.5)
        ax.set_xlabel("test % trained on the proxy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=6.5, frameon=False)
    axes[0][0].set_xlim(*limits)
    axes[0][0].set_ylim(*limits)
    axes[0][0].set_ylabel("test % trained on the whole training split", fontsize=8)
    bars = any(dx or dy for pts in points.values() for _, dx, _, dy, _ in pts)
    fig.suptitle("Figure F8: each proxy's top architectures (" + ("mean \u00b1 std over repeats)" if bars else
                 "one repeat each: no error bars)"), fontsize=9.5)
    fig.tight_layout()
    return fig


def render(run_dir: Path, out_dir: Path, fraction: float = TOP_FRACTION) -> list[Path]:
    if not run_dir.is_dir():
        raise DMError(f"no NAS run directory at {run_dir}: give the out folder of nas.search")
    if out_dir.exists() and not out_dir.is_dir():
        raise DMError(f"the report folder {out_dir} is a file: give a folder")
    summaries, truth, truth_std, info = load_run(run_dir, fraction)
    written = [atomic_write_text(out_dir / "table5.csv", table_csv(summaries)),
               atomic_write_text(out_dir / "table5.md", table_markdown(summaries, info, fraction))]
    written.append(figure_f8(summaries, truth, truth_std, out_dir / "figure_f8.png"))
    return written


HELP = "Table 5 and Figure F8 from a NAS run folder"
DESCRIPTION = ("Table 5 (CSV and Markdown) and Figure F8 from the result files of a NAS run folder: nas.search's "
               "results.csv, nas.groundtruth's groundtruth.csv and run.json.")


def add_arguments(p) -> None:
    p.add_argument("run", type=Path, metavar="RUN", help="the run folder of nas.search (its --out)")
    p.add_argument("--out", type=Path, default=None, help="folder for the table and figure (default: RUN/report)")
    p.add_argument("--top-fraction", type=float, default=TOP_FRACTION,
                   help="fraction of each proxy's ranking the correlation is taken over, as in the paper")


def make(args) -> list[Path]:
    if not 0 < args.top_fraction <= 1:
        raise DMError(f"top_fraction must be in (0, 1], got {args.top_fraction}")
    if args.out is None:
        args.out = args.run / "report"
    return render(args.run, args.out, args.top_fraction)


def main(argv: list[str] | None = None) -> int:
    """``python -m reports nas ...``."""
    return reports_main(["nas", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    exit_process(main())
