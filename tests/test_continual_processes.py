"""continual.run as separate processes: two writers into one run directory lose nothing."""
from __future__ import annotations

import csv
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = "convnet-d1-w8-relu-instancenorm-avgpool"


def command(out: Path, seeds: list[int], memory: str = "random", epochs: int = 2, repeats: int = 2) -> list[str]:
    return [sys.executable, "-m", "continual.run", "--dataset", "digits", "--steps", "2", "--memory", memory,
            "--ipc", "2", "--seeds", *map(str, seeds), "--repeats", str(repeats), "--epochs", str(epochs),
            "--iterations", "20", "--model", TINY_NET, "--max-train-per-class", "20", "--option", "dm.batch_real=8",
            "--device", "cpu", "--threads", "1", "--out", str(out), "--no-progress"]


def environment(tmp_path: Path) -> dict:
    return {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _append_many(path: str, seed: int, count: int) -> None:
    from continual.results import ResultsTable

    table = ResultsTable(path)
    for repeat in range(count):
        table.add({"dataset": "digits", "method": "random", "steps": 1, "ipc": 1, "seed": seed, "repeat": repeat,
                   "step": 0, "classes_seen": 10, "accuracy_fraction": 0.5, "experience_accuracy_fraction": [0.5],
                   "precision": "fp32", "augment": "none"})


def test_two_processes_appending_rows_at_once_lose_none(tmp_path):
    path = tmp_path / "results.csv"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(str(path), seed, 60)) for seed in (0, 1, 2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=300)
        assert w.exitcode == 0
    lines = path.read_text().splitlines()
    assert lines[0].startswith("dataset,") and sum(line.startswith("dataset,") for line in lines) == 1
    keys = [(r["seed"], r["repeat"]) for r in rows_of(path)]
    assert len(keys) == 180 and len(set(keys)) == 180


def test_two_continual_runs_with_different_seeds_into_one_folder(tmp_path):
    out = tmp_path / "shared"
    processes = [subprocess.Popen(command(out, [seed]), cwd=ROOT, env=environment(tmp_path),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    for p in processes:
        stdout, stderr = p.communicate(timeout=500)
        assert p.returncode == 0, stderr
    rows = rows_of(out / "results.csv")
    units = sorted((r["seed"], r["repeat"], r["step"]) for r in rows)
    assert units == sorted((str(s), str(r), str(t)) for s in (0, 1) for r in (0, 1) for t in (0, 1))
    log = (out / "log.txt").read_text()
    assert log.count(" step=") == 8  # both processes' finished steps are logged, and recorded
