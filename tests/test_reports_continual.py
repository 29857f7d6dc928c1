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


NEW_COLUMNS = ("dataset", "method", "steps", "ipc", "seed", "run", "step", "classes_seen", "accuracy_fraction",
               "experience_accuracy_fraction", "precision")
# per (seed): the accuracy matrix a[t][e] after each of 3 steps
MATRICES = {0: [[0.90], [0.80, 0.95], [0.70, 0.90, 0.85]],
            1: [[0.92], [0.82, 0.97], [0.62, 0.92, 0.87]]}


def write_new_results(path):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(NEW_COLUMNS)
        for seed, matrix in MATRICES.items():
            for step, row in enumerate(matrix):
                writer.writerow(("mnist", "dm", 3, 2, seed, 0, step, 4 * (step + 1) // 1, sum(row) / len(row),
                                 " ".join(f"{v:.6f}" for v in row), "fp32"))


def test_accuracy_matrix_and_average_forgetting(tmp_path):
    results = tmp_path / "results.csv"
    write_new_results(results)
    out = tmp_path / "report"
    assert report.main([str(results), "--out", str(out)]) == 0
    with open(out / "final_accuracy.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    # seed 0: e0 90 -> 70 (20), e1 95 -> 90 (5): 12.5; seed 1: e0 92 -> 62 (30), e1 97 -> 92 (5): 17.5
    assert float(row["forgetting_mean"]) == pytest.approx(15.0, abs=1e-6)
    assert float(row["forgetting_std"]) == pytest.approx(2.5, abs=1e-6)
    assert float(row["final_accuracy_mean"]) == pytest.approx(100 * (2.45 / 3 + 2.41 / 3) / 2, abs=0.01)
    matrix = (out / "accuracy_matrix.md").read_text()
    assert "average forgetting 15.00 \u00b1 2.50 points" in matrix
    assert "| 2 | 66.0 | 91.0 | 86.0 |" in matrix and "| 0 | 91.0 |  |  |" in matrix
    assert (out / "figure_steps3_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "15.00 \u00b1 2.50" in (out / "final_accuracy.md").read_text()


def test_old_results_files_are_read_without_a_matrix(tmp_path):
    results = tmp_path / "results.csv"
    write_results(results, dataset="mnist")  # the 'accuracy' column of files written before accuracy_fraction
    out = tmp_path / "report"
    assert report.main([str(results), "--out", str(out)]) == 0
    with open(out / "final_accuracy.csv", newline="") as f:
        assert all(r["forgetting_mean"] == "" for r in csv.DictReader(f))
    assert "No results file holds per-experience accuracies" in (out / "accuracy_matrix.md").read_text()
    assert not (out / "figure6_matrix.png").exists()
