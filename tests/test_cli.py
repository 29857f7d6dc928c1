"""The CLI end to end: success paths print one JSON line last; every bad input is one line on stderr and exit 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dm_core", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def in_process(capsys, *args):
    """The same ``main`` as ``python -m dm_core``, called in-process (no interpreter start-up per case)."""
    from dm_core.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_one_line_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.slow
def test_condense_then_evaluate(tmp_path):
    out = tmp_path / "dm.pt"
    proc = cli("condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "4",
               "--batch-real", "8", "--model", "convnet-w16", "--device", "cpu", "--out", str(out), "--png")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["method"] == "dm" and figures["images"] == 10 and Path(figures["png"]).is_file()
    assert not out.with_suffix(".ckpt").exists()  # the finished set supersedes its checkpoint
    proc = cli("evaluate", str(out), "--model", "convnet-w16", "--epochs", "3", "--repeats", "2", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(figures["accuracies_percent"]) == 2 and 0 <= figures["mean_percent"] <= 100
    assert figures["dataset"] == "digits" and figures["repeats"] == 2


@pytest.mark.parametrize("args, pattern", [
    (["condense", "--dataset", "imagenet21k", "--method", "dm", "--ipc", "1"], "unknown dataset"),
    (["condense", "--dataset", "digits", "--method", "kmeans", "--ipc", "1"], "unknown method"),
    (["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--model", "resnet50"], "unknown model"),
    (["condense", "--dataset", "digits", "--method", "random", "--ipc", "1000"], "ipc 1000 is more than"),
    (["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "20", "--lr-img", "1e30",
      "--batch-real", "4", "--model", "convnet-w8"], "loss became"),
    (["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--device", "cuda"], "CUDA is not available"),
])
def test_condense_errors(tmp_path, capsys, args, pattern):
    if pattern == "CUDA is not available" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "keep.pt"
    out.write_bytes(b"existing")
    proc = in_process(capsys, *args, "--out", str(out), "--no-progress")
    assert_one_line_error(proc, pattern)
    assert out.read_bytes() == b"existing"  # an existing file is left untouched


def test_missing_dataset_names_the_files(tmp_path, capsys):
    proc = in_process(capsys, "condense", "--dataset", "mnist", "--method", "random", "--ipc", "1", "--data-root",
               str(tmp_path / "empty"), "--out", str(tmp_path / "x.pt"))
    if proc.returncode == 0:
        pytest.skip("this machine could download MNIST")
    assert_one_line_error(proc, "MNIST/raw")
    assert not (tmp_path / "x.pt").exists()


def test_evaluate_errors(tmp_path):
    """Through the real ``python -m dm_core`` entry point."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert_one_line_error(cli("evaluate", str(bad)), "not a readable synthetic-set file")
    assert_one_line_error(cli("evaluate", str(tmp_path / "none.pt")), "no synthetic-set file")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    assert_one_line_error(cli("evaluate", str(tmp_path / "foreign.pt")), "not a synthetic set")
