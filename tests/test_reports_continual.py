"""reports/continual.py: Figures 6 and 7 and the final-accuracy table from a small hand-made results file."""
from __future__ import annotations

import csv

import pytest

from reports import continual as report

COLUMNS = ("dataset", "method", "steps", "ipc", "seed", "run", "step", "classes_seen", "accuracy")


def write_results(path, dataset="cifar100"):
    rows = []
    for steps in (5, 10):
        for method, base in (("dm", 0.60), ("random", 0.40)):
            for seed in (0, 1):
                for run in (0, 1):
                    for step in range(steps):
                        accuracy = base - 0.02 * step + 0.01 * seed + 0.005 * run
                        rows.append((dataset, method, steps, 20, seed, run, step, (step + 1) * 100 // steps,
                                     accuracy))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def test_figure_command_writes_both_figures_and_the_table(tmp_path, capsys):
    results = tmp_path / "results.csv"
    write_results(results)
    out = tmp_path / "report"
    assert report.main([str(results), "--out", str(out)]) == 0
    for name in ("figure6.png", "figure6.pdf", "figure7.png", "figure7.pdf", "final_accuracy.md",
                 "final_accuracy.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "figure6.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "final_accuracy.csv", newline="") as f:
        table = {(int(r["steps"]), r["method"]): r for r in csv.DictReader(f)}
    # 5 steps, DM, last step 4: 60 - 8 + mean(seed) 0.5 + mean(run) 0.25 = 52.75; std over 4 values
    assert float(table[(5, "dm")]["final_accuracy_mean"]) == pytest.approx(52.75, abs=0.01)
    assert float(table[(5, "dm")]["final_accuracy_std"]) == pytest.approx(0.559, abs=0.01)
    assert table[(10, "random")]["classes"] == "100" and table[(10, "random")]["paper"] == "24.8"
    assert "| cifar100 | 5 | 20 | DM | 100 | 4 | 52.75" in (out / "final_accuracy.md").read_text()


def test_paper_markers_only_for_the_paper_setting(tmp_path):
    results = tmp_path / "results.csv"
    write_results(results, dataset="mnist")
    out = tmp_path / "report"
    assert report.main([str(results), "--out", str(out)]) == 0
    with open(out / "final_accuracy.csv", newline="") as f:
        assert all(r["paper"] == "" for r in csv.DictReader(f))


def test_bad_results_file_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert report.main([str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert report.main([str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
