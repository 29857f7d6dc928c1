"""reports/nas.py: Table 5 and Figure F8 from a small hand-written run directory (no training)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from scipy import stats

from dm_core import ConvNetSpec
from nas.results import TrialRecord, TrialStore, read_trials
from reports import nas as report

ROOT = Path(__file__).resolve().parents[1]

SPECS = [ConvNetSpec(d, 32, a, "none", "avgpool") for d in (1, 2, 3, 4) for a in ("relu", "sigmoid")]  # 8 archs


def record(proxy: str, spec: ConvNetSpec, repeat: int, val: float, test: float, images: int = 100,
           seconds: float = 30.0) -> TrialRecord:
    return TrialRecord(proxy, spec.name, spec.depth, spec.width, spec.act, spec.norm, spec.pool, repeat, repeat,
                       "e10-b250", images, 10, val, test, seconds)


@pytest.fixture
def run_dir(tmp_path):
    """Two proxies over 8 architectures (2 repeats each) and a ground truth for all 8 (2 repeats).

    dm10's VALIDATION accuracy orders the architectures exactly as the truth does, but its proxy-trained TEST
    accuracy orders its top half the other way round: validation ranks, test is what is correlated.
    """
    run = tmp_path / "run"
    truth = {s.name: 0.90 + 0.01 * i for i, s in enumerate(SPECS)}  # the last spec is truly best
    dm_val = {s.name: 0.50 + 0.02 * i for i, s in enumerate(SPECS)}
    dm_test = {s.name: 0.80 - 0.01 * i for i, s in enumerate(SPECS)}
    rnd_val = {s.name: 0.50 + 0.02 * ((3 * i) % 8) for i, s in enumerate(SPECS)}  # scrambled
    rnd_test = {s.name: 0.40 + 0.03 * ((5 * i) % 8) for i, s in enumerate(SPECS)}
    results, gt = TrialStore(run / "results.csv"), TrialStore(run / "groundtruth.csv")
    for spec in SPECS:
        name = spec.name
        for repeat, delta in ((0, -0.005), (1, 0.005)):
            results.add(record("dm10", spec, repeat, dm_val[name] + delta, dm_test[name] + 2 * delta))
            results.add(record("random10", spec, repeat, rnd_val[name] + delta, rnd_test[name], seconds=20.0))
            gt.add(record("groundtruth", spec, repeat, truth[name] - 0.05, truth[name] + 0.8 * delta, images=1000))
    (run / "run.json").write_text(json.dumps({
        "dataset": "mnist", "split_seed": 0, "val_fraction": 0.1,
        "proxies": {"dm10": {"images": 100, "make_seconds": 120.0}, "random10": {"images": 100, "make_seconds": 0}}}))
    return run, truth, dm_test, rnd_val, rnd_test


def test_table5_correlates_test_accuracies_and_prints_the_paper_beside_the_run(run_dir, tmp_path):
    run, truth, dm_test, rnd_val, rnd_test = run_dir
    out = tmp_path / "report"
    assert report.main([str(run), "--out", str(out), "--top-fraction", "0.5"]) == 0

    rows = {r["method"]: r for r in csv.DictReader((out / "table5.csv").open())}
    assert list(rows) == ["random10", "dm10", "whole (ground truth)"]  # the paper's column order
    best = SPECS[-1].name
    dm = rows["dm10"]
    assert dm["selected"] == best and dm["top_k"] == "4" and dm["precision"] == "fp32"
    # percent in the table; the selected architecture's proxy validation / proxy test / whole test accuracy
    assert float(dm["selected_whole_test_percent"]) == pytest.approx(100 * truth[best])
    assert float(dm["selected_proxy_test_percent"]) == pytest.approx(100 * dm_test[best])
    assert float(dm["selected_proxy_val_percent"]) == pytest.approx(64.0)
    # validation ranks (same order as the truth: rho would be +1), test is correlated (reversed: -1)
    assert float(dm["spearman_top_k"]) == pytest.approx(-1.0)
    top = sorted(rnd_val, key=lambda a: (-rnd_val[a], a))[:4]
    expected = stats.spearmanr([rnd_test[a] for a in top], [truth[a] for a in top]).statistic
    assert float(rows["random10"]["spearman_top_k"]) == pytest.approx(expected, abs=1e-4)
    assert float(rows["random10"]["search_minutes"]) == pytest.approx(16 * 20 / 60, abs=0.01)
    assert float(dm["make_minutes"]) == pytest.approx(2.0)
    assert rows["whole (ground truth)"]["storage_images"] == "1000"
    assert float(rows["whole (ground truth)"]["spearman_top_k"]) == pytest.approx(1.0)
    # the paper's Table 5 beside the run's
    assert (dm["paper_column"], dm["paper_performance_percent"], dm["paper_spearman_top5"]) == ("DM", "82.8", "0.76")
    assert rows["random10"]["paper_spearman_top5"] == "-0.04"
    assert rows["whole (ground truth)"]["paper_column"] == "Whole"

    markdown = (out / "table5.md").read_text()
    assert "| | random10 | dm10 | whole (ground truth) |" in markdown
    assert "| Performance (%) | 95.0 | 97.0 | 97.0 |" in markdown
    assert "| Performance, paper (%) | 84.0 | 82.8 | 85.9 |" in markdown
    assert "| Correlation, paper (top 5%) | -0.04 | 0.76 | 1.00 |" in markdown
    assert "-1.00 (k=4)" in markdown and "| Proxy making, paper (min) | - | 72 | - |" in markdown

    png = (out / "figure_f8.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_figure_f8_shares_axes_draws_error_bars_and_the_diagonal(run_dir):
    import matplotlib.pyplot as plt

    run, truth, dm_test, *_ = run_dir
    summaries, truth_mean, truth_std, _ = report.load_run(run, 0.5)
    fig = report.draw_f8(summaries, truth_mean, truth_std)
    try:
        axes = fig.axes
        assert [ax.get_title().split(":")[0] for ax in axes] == ["random10", "dm10"]  # no ground-truth panel
        limits = {(ax.get_xlim(), ax.get_ylim()) for ax in axes}
        assert len(limits) == 1  # shared axes
        (xlim, ylim), = limits
        assert xlim == ylim  # square, so that y = x is the diagonal
        dm_ax = axes[1]
        diagonal = [line for line in dm_ax.get_lines() if line.get_label() == "y = x"]
        assert len(diagonal) == 1 and list(diagonal[0].get_xdata()) == list(diagonal[0].get_ydata())
        bars = dm_ax.containers[0]  # errorbar container: (points, caps, (x bars, y bars))
        xs, ys = bars.lines[0].get_data()
        assert sorted(xs) == pytest.approx(sorted(100 * dm_test[s.name] for s in SPECS[4:]))
        assert sorted(ys) == pytest.approx(sorted(100 * truth[s.name] for s in SPECS[4:]))
        xbars, ybars = bars.lines[2]
        widths = [seg[1][0] - seg[0][0] for seg in xbars.get_segments()]
        heights = [seg[1][1] - seg[0][1] for seg in ybars.get_segments()]
        assert widths == pytest.approx([2 * 1.0] * 4)  # std of the proxy-trained test accuracy: 1.0 points
        assert heights == pytest.approx([2 * 0.4] * 4)  # std of the whole-trained test accuracy: 0.4 points
        assert all(xlim[0] <= v <= xlim[1] for v in (*xs, *ys))
    finally:
        plt.close(fig)


def test_missing_ground_truth_leaves_correlation_undefined(run_dir, tmp_path):
    run, *_ = run_dir
    (run / "groundtruth.csv").unlink()
    out = tmp_path / "report"
    assert report.main([str(run), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "table5.csv").open()))
    assert [r["method"] for r in rows] == ["random10", "dm10"]
    assert all(math.isnan(float(r["spearman_top_k"])) and math.isnan(float(r["selected_whole_test_percent"]))
               for r in rows)
    assert "n/a" in (out / "table5.md").read_text()


def test_a_results_file_of_the_old_format_is_one_clear_error(run_dir, tmp_path, capsys):
    run, *_ = run_dir
    legacy = ("proxy,arch,depth,width,act,norm,pool,repeat,seed,budget,train_images,steps,val_acc,test_acc,seconds\n"
              "dm10,convnet-d1-w32-relu-none-avgpool,1,32,relu,none,avgpool,0,0,e10-b250,100,10,0.5,,3.0\n")
    (run / "results.csv").write_text(legacy)
    assert report.main([str(run), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "older nas" in err[0] and "proxy-trained test accuracy" in err[0]
    assert not (tmp_path / "report").exists()


def test_report_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no search results")
    assert report.main([str(tmp_path), "--top-fraction", "0"]) == 2
    assert "--top-fraction" in capsys.readouterr().err


def test_a_duplicated_trial_row_is_one_error_not_another_repeat(run_dir, tmp_path, capsys):
    """Two rows of one training (same proxy, architecture, budget and seed) would be averaged in as two repeats and
    could change the selected architecture: the report refuses them, naming the lines."""
    run, *_ = run_dir
    lines = (run / "results.csv").read_text().splitlines(keepends=True)
    (run / "results.csv").write_text("".join([*lines, lines[1]]))
    assert report.main([str(run), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"lines 2 and {len(lines) + 1} record the same" in err[0]
    assert "proxy dm10" in err[0] and not (tmp_path / "report").exists()


def test_a_run_folder_of_the_previous_layout_gives_the_same_table(tmp_path, capsys):
    """reports/nas_mnist/before/run (the report before issue 20) was written before the augment column and the
    train_iterations name: it is read through the upgrade (six-group DSA, as those trainings used) and gives its
    committed table again."""
    committed = ROOT / "reports" / "nas_mnist" / "before"
    assert (committed / "run" / "results.csv").read_text().startswith("proxy,arch,depth,width,act,norm,pool,repeat,"
                                                                      "seed,budget,precision,train_images,steps,")
    assert report.main([str(committed / "run"), "--out", str(tmp_path), "--top-fraction", "0.25"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["report"] == "nas"
    assert (tmp_path / "table5.csv").read_text() == (committed / "table5.csv").read_text()
    frame = read_trials(committed / "run" / "results.csv")
    assert set(frame["augment"]) == {"color_crop_cutout_flip_scale_rotate"} and set(frame["train_iterations"]) == {50}


def test_the_committed_mnist_report_is_rendered_from_its_run_folder(tmp_path, capsys):
    """reports/nas_mnist/run (issue 20's recipe: the digits' strategy without flips, 51 passes for --epochs 50) gives
    the committed table5.csv again, trains nothing."""
    committed = ROOT / "reports" / "nas_mnist"
    assert report.main([str(committed / "run"), "--out", str(tmp_path), "--top-fraction", "0.25"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["report"] == "nas"
    assert (tmp_path / "table5.csv").read_text() == (committed / "table5.csv").read_text()
    frame = read_trials(committed / "run" / "results.csv")
    assert set(frame["augment"]) == {"color_crop_cutout_scale_rotate"} and set(frame["train_iterations"]) == {51}
