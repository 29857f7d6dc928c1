"""reports/nas.py: Table 5 and Figure F8 from a small hand-written run directory (no training)."""
from __future__ import annotations

import csv
import json
import math

import pytest
from scipy import stats

from dm_core import ConvNetSpec
from nas.results import TrialRecord, TrialStore
from reports import nas as report

SPECS = [ConvNetSpec(d, 32, a, "none", "avgpool") for d in (1, 2, 3, 4) for a in ("relu", "sigmoid")]  # 8 archs


def record(proxy: str, spec: ConvNetSpec, repeat: int, val: float, test: float | None = None,
           images: int = 100, seconds: float = 30.0) -> TrialRecord:
    return TrialRecord(proxy, spec.name, spec.depth, spec.width, spec.act, spec.norm, spec.pool, repeat, repeat,
                       "e10-b250", images, 10, val, test, seconds)


@pytest.fixture
def run_dir(tmp_path):
    """Two proxies over 8 architectures (2 repeats each) and a ground truth for all 8."""
    run = tmp_path / "run"
    truth = {s.name: 0.90 + 0.01 * i for i, s in enumerate(SPECS)}  # the last spec is truly best
    dm = {s.name: 0.50 + 0.02 * i for i, s in enumerate(SPECS)}  # same order as the truth
    rnd = {s.name: 0.50 + 0.02 * ((3 * i) % 8) for i, s in enumerate(SPECS)}  # scrambled
    results, gt = TrialStore(run / "results.csv"), TrialStore(run / "groundtruth.csv")
    for spec in SPECS:
        for repeat, delta in ((0, -0.005), (1, 0.005)):
            results.add(record("dm10", spec, repeat, dm[spec.name] + delta, images=100))
            results.add(record("random10", spec, repeat, rnd[spec.name] + delta, images=100, seconds=20.0))
        gt.add(record("groundtruth", spec, 0, truth[spec.name] - 0.05, truth[spec.name], images=1000))
    (run / "run.json").write_text(json.dumps({
        "dataset": "mnist", "split_seed": 0, "val_fraction": 0.1,
        "proxies": {"dm10": {"images": 100, "make_seconds": 120.0}, "random10": {"images": 100, "make_seconds": 0}}}))
    return run, truth, dm, rnd


def test_table5_and_figure_f8_render_from_result_files(run_dir, tmp_path):
    run, truth, dm, rnd = run_dir
    out = tmp_path / "report"
    assert report.main(["--run", str(run), "--out", str(out), "--top-fraction", "0.5"]) == 0

    rows = {r["method"]: r for r in csv.DictReader((out / "table5.csv").open())}
    assert list(rows) == ["random10", "dm10", "whole (ground truth)"]  # the paper's column order
    best = SPECS[-1].name
    assert rows["dm10"]["selected"] == best and float(rows["dm10"]["selected_whole_acc"]) == pytest.approx(truth[best])
    assert float(rows["dm10"]["spearman_top_k"]) == pytest.approx(1.0) and rows["dm10"]["top_k"] == "4"
    top = sorted(rnd, key=lambda a: (-rnd[a], a))[:4]
    expected = stats.spearmanr([rnd[a] for a in top], [truth[a] for a in top]).statistic
    assert float(rows["random10"]["spearman_top_k"]) == pytest.approx(expected)
    assert float(rows["random10"]["search_minutes"]) == pytest.approx(16 * 20 / 60)
    assert float(rows["dm10"]["make_minutes"]) == pytest.approx(2.0)
    assert rows["whole (ground truth)"]["storage_images"] == "1000"

    markdown = (out / "table5.md").read_text()
    assert "| | random10 | dm10 | whole (ground truth) |" in markdown
    assert "| Performance (%) |" in markdown and "1.00 (k=4)" in markdown

    png = (out / "figure_f8.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_missing_ground_truth_leaves_correlation_undefined(run_dir, tmp_path):
    run, *_ = run_dir
    (run / "groundtruth.csv").unlink()
    out = tmp_path / "report"
    assert report.main(["--run", str(run), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "table5.csv").open()))
    assert [r["method"] for r in rows] == ["random10", "dm10"]
    assert all(math.isnan(float(r["spearman_top_k"])) and math.isnan(float(r["selected_whole_acc"])) for r in rows)
    assert "n/a" in (out / "table5.md").read_text()


def test_report_errors_are_one_line(tmp_path, capsys):
    assert report.main(["--run", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no search results")
    assert report.main(["--run", str(tmp_path), "--top-fraction", "0"]) == 2
    assert "--top-fraction" in capsys.readouterr().err
