"""Table 5 (CSV + Markdown) and Figure F8 of DM section 3.6 from a NAS run directory's result files; never trains.

    python -m reports.nas --run runs/nas --out reports/nas_cifar10 [--top-fraction 0.05]

Inputs: ``results.csv`` (nas.search), ``groundtruth.csv`` (nas.groundtruth), ``run.json`` (proxy sizes and costs).
Outputs: ``table5.csv`` (one row per method), ``table5.md`` (the paper's layout: one column per method) and
``figure_f8.png`` (one scatter per method: proxy accuracy vs whole-data accuracy of its top architectures).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections import Counter
from pathlib import Path

from dm_core import DMError, atomic_write_bytes, atomic_write_text

from . import report_cli
from nas.analysis import GROUNDTRUTH_LABEL, TOP_FRACTION, MethodSummary, mean_scores, summarize_run
from nas.results import read_records
from nas.rundir import RunDir

CSV_COLUMNS = ("method", "budget", "architectures", "top_k", "spearman_top_k", "spearman_all", "selected",
               "selected_proxy_acc", "selected_whole_acc", "search_minutes", "make_minutes", "storage_images")


def load_run(run_dir: Path, fraction: float) -> tuple[list[MethodSummary], dict[str, float], dict]:
    run = RunDir(run_dir)
    results = read_records(run.results)
    if not results:
        raise DMError(f"no search results in {run.results}: run python -m nas.search --out {run_dir} first")
    groundtruth = read_records(run.groundtruth)
    if groundtruth:  # one training budget for the ground truth: the most common one
        budget = Counter(r.budget for r in groundtruth).most_common(1)[0][0]
        groundtruth = [r for r in groundtruth if r.budget == budget]
    info = run.info()
    summaries = summarize_run(results, groundtruth, info.get("proxies", {}), fraction)
    return summaries, mean_scores(groundtruth, "test_acc"), info


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _rho(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def table_csv(summaries: list[MethodSummary]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for s in summaries:
        writer.writerow([getattr(s, c) for c in CSV_COLUMNS])
    return buffer.getvalue()


def table_markdown(summaries: list[MethodSummary], info: dict, fraction: float) -> str:
    head = "| | " + " | ".join(s.method for s in summaries) + " |"
    rows = [
        ("Performance (%)", [_pct(s.selected_whole_acc) for s in summaries]),
        (f"Correlation (top {100 * fraction:g}%)", [f"{_rho(s.spearman_top_k)} (k={s.top_k})" for s in summaries]),
        ("Correlation (all ranked)", [_rho(s.spearman_all) for s in summaries]),
        ("Time (min)", [f"{s.search_minutes:.1f}" for s in summaries]),
        ("Proxy making (min)", [f"{s.make_minutes:.1f}" for s in summaries]),
        ("Storage (images)", [str(s.storage_images) for s in summaries]),
        ("Architectures ranked", [str(s.architectures) for s in summaries]),
        ("Training budget", [s.budget for s in summaries]),
        ("Selected", [f"`{s.selected}`" for s in summaries]),
    ]
    lines = [f"Table 5 ({info.get('dataset', '?')}): performance = whole-data test accuracy of the architecture each "
             f"method selects; correlation = Spearman rho of proxy validation accuracy vs whole-data test accuracy "
             f"over the method's top {100 * fraction:g}%.", "", head, "|---" * (len(summaries) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines) + "\n"


def figure_f8(summaries: list[MethodSummary], truth: dict[str, float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summaries)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.3), squeeze=False)
    for ax, s in zip(axes[0], summaries):
        top = [a for a in s.top if a in truth]
        xs = [100 * s.proxy_scores[a] for a in top]
        ys = [100 * truth[a] for a in top]
        ax.scatter(xs, ys, s=22, alpha=0.8, color="tab:blue", edgecolor="none")
        if top and top[0] == s.selected:
            ax.scatter(xs[:1], ys[:1], s=60, facecolor="none", edgecolor="tab:red", label="selected")
            ax.legend(loc="lower right", fontsize=7, frameon=False)
        ax.set_title(f"{s.method}  (rho={_rho(s.spearman_top_k)}, k={s.top_k})", fontsize=9)
        ax.set_xlabel("validation % (whole-split training)" if s.method == GROUNDTRUTH_LABEL
                      else "accuracy trained on proxy (val %)", fontsize=8)
        ax.set_ylabel("accuracy trained on whole set (test %)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Figure F8: top architectures of each proxy", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def render(run_dir: Path, out_dir: Path, fraction: float = TOP_FRACTION) -> list[Path]:
    summaries, truth, info = load_run(run_dir, fraction)
    written = [atomic_write_text(out_dir / "table5.csv", table_csv(summaries)),
               atomic_write_text(out_dir / "table5.md", table_markdown(summaries, info, fraction))]
    written.append(figure_f8(summaries, truth, out_dir / "figure_f8.png"))
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reports nas", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="NAS run directory (nas.search --out)")
    p.add_argument("--out", default=None, help="where to write the table and figure (default: RUN/report)")
    p.add_argument("--top-fraction", type=float, default=TOP_FRACTION,
                   help="fraction of each proxy's ranking the correlation is taken over (paper: 0.05)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def make():
        if not 0 < args.top_fraction <= 1:
            raise DMError(f"--top-fraction must be in (0, 1], got {args.top_fraction}")
        return render(Path(args.run), Path(args.out) if args.out else Path(args.run) / "report", args.top_fraction)

    return report_cli(make)


if __name__ == "__main__":
    sys.exit(main())
