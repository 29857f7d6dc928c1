"""Bad input to ``continual.run`` and ``reports continual``: exit status 2, one ``error:`` line, no traceback, and every
file that was there before is byte-identical afterwards (nothing written, nothing lost)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_harness import assert_clean_refusal, run_cli, snapshot

TINY_NET = "convnet-d1-w8-relu-instancenorm-avgpool"
ROOT = Path(__file__).resolve().parents[1]
GOOD_ROW = "digits,random,2,1,0,0,0,5,0.500000,0.500000,fp32\n"
HEADER = ("dataset,method,steps,ipc,seed,run,step,classes_seen,accuracy_fraction,experience_accuracy_fraction,"
          "precision\n")


@pytest.fixture
def run_main():
    from continual.run import main

    return main


def existing_run(folder: Path, results: str | bytes | None = None, config: str | None = None) -> Path:
    """A run directory as continual.run leaves it (config.json of --ipc 1 --steps 2, results.csv, log.txt)."""
    from continual.config import ContinualConfig

    folder.mkdir(parents=True, exist_ok=True)
    cfg = ContinualConfig(out=folder, dataset="digits", steps=2, methods=("random",), ipc=1, seeds=(0,), runs=1,
                          epochs=1, model=TINY_NET, max_train_per_class=20, device="cpu", progress=False)
    (folder / "config.json").write_text(config if config is not None else json.dumps(cfg.to_json(), indent=2))
    results = results if results is not None else HEADER + GOOD_ROW
    if isinstance(results, bytes):
        (folder / "results.csv").write_bytes(results)
    else:
        (folder / "results.csv").write_text(results)
    (folder / "log.txt").write_text("earlier log lines\n")
    return folder


BASE = ["--dataset", "digits", "--steps", "2", "--memory", "random", "--ipc", "1", "--seeds", "0", "--runs", "1",
        "--epochs", "1", "--model", TINY_NET, "--max-train-per-class", "20", "--device", "cpu", "--no-progress"]

# (arguments replacing / added to BASE, what the run directory holds beforehand, expected words in the error)
RUN_CASES = {
    "steps-not-dividing": (["--steps", "3"], None, "does not divide"),
    "ipc-above-class-size": (["--ipc", "1000"], None, "ipc 1000 is more than"),
    "ipc-zero": (["--ipc", "0"], None, "--ipc must be at least 1"),
    "missing-npz": (["--dataset", "npz:/no/such/file.npz"], None, "no array file"),
    "unknown-dataset": (["--dataset", "nosuchdata"], None, "unknown dataset"),
    "options-for-unknown-method": (["--option", "gdumb.lr=1"], None, "unknown method(s) gdumb"),
    "typo-in-dm-option": (["--memory", "dm", "--option", "dm.bogus=1"], None, "unknown option(s) bogus for DMConfig"),
    "typo-in-unused-method-option": (["--option", "dsa.outer_lop=3"], None, "unknown option(s) outer_lop for DSAConfig"),
    "negative-dm-iterations": (["--memory", "dm", "--option", "dm.iterations=-1"], None, "iterations"),
    "text-dm-iterations": (["--memory", "dm", "--option", "dm.iterations=abc"], None, "'abc'"),
    "random-takes-no-options": (["--option", "random.iterations=3"], None, "random selection takes no options"),
    "herding-epochs-zero": (["--memory", "herding", "--option", "herding.epochs=0"], None, "herding epochs"),
    "unknown-builder-model": (["--memory", "dm", "--option", "dm.model=nosuchnet"], None, "nosuchnet"),
    "seed-as-builder-option": (["--memory", "dm", "--option", "dm.seed=3"], None, "cannot be set"),
    "unknown-model": (["--model", "nosuchnet"], None, "nosuchnet"),
    "runs-zero": (["--runs", "0"], None, "--runs must be at least 1"),
    "epochs-zero": (["--epochs", "0"], None, "--epochs must be at least 1"),
    "repeated-seeds": (["--seeds", "1", "1"], None, "distinct"),
    "negative-seed": (["--seeds", "-1"], None, "non-negative"),
    "threads-zero": (["--threads", "0"], None, "--threads must be at least 1"),
    "unknown-device": (["--device", "tpu"], None, "tpu"),
    "unknown-memory": (["--memory", "gdumb"], None, "invalid choice"),
    "unknown-logger": (["--logger", "text,wandb"], None, "unknown logger wandb"),
    "unknown-precision": (["--precision", "fp16"], None, "invalid choice"),
    "option-without-equals": (["--option", "dm.iterations"], None, "METHOD.KEY=VALUE"),
    "out-is-a-file": (["--out", "{tmp}/afile"], "file", "is a file"),
    "run-dir-other-ipc": (["--ipc", "2"], "run", "ipc 1 -> 2"),
    "run-dir-garbage-results": ([], "run:garbage", "not a continual results file"),
    "run-dir-binary-results": ([], "run:binary", "not a readable results file"),
    "run-dir-truncated-results": ([], "run:truncated", "middle of a line"),
    "run-dir-text-accuracy": ([], "run:text", "could not convert"),
    "run-dir-accuracy-not-fraction": ([], "run:percent", "not a fraction"),
    "run-dir-short-row": ([], "run:short", "fields"),
    "run-dir-wrong-columns": ([], "run:columns", "not a continual results file"),
    "run-dir-corrupt-config": ([], "run:config", "config.json is not readable"),
    "run-dir-corrupt-memory-file": ([], "run:memory", "not a readable synthetic-set file"),
}
BAD_RESULTS = {
    "garbage": "\x00\x01 no header here \x7f\n",
    "binary": b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
    "truncated": HEADER + GOOD_ROW + "digits,random,2,1,0,0,1,10,0.4",
    "text": HEADER + GOOD_ROW.replace("0.500000,0.500000", "high,0.5"),
    "percent": HEADER + GOOD_ROW.replace("0.500000,0.500000", "50.0,0.5"),
    "short": HEADER + "digits,random,2\n",
    "columns": "a,b\n1,2\n",
}


def argv_for(extra: list[str], out: Path) -> list[str]:
    argv = list(BASE)
    for i in range(0, len(extra)):
        if extra[i].startswith("--") and extra[i] in argv and extra[i] not in ("--option",):
            position = argv.index(extra[i])
            width = 1
            while position + width < len(argv) and not argv[position + width].startswith("--"):
                width += 1
            del argv[position:position + width]
    argv += extra
    if "--out" not in argv:
        argv += ["--out", str(out)]
    return argv


@pytest.mark.parametrize("name", sorted(RUN_CASES))
def test_continual_run_refuses_bad_input(name, tmp_path, capsys, run_main):
    extra, state, words = RUN_CASES[name]
    out = tmp_path / "run"
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    if state == "file":
        (tmp_path / "afile").write_text("not a folder\n")
    elif state and state.startswith("run"):
        kind = state.partition(":")[2]
        existing_run(out, results=BAD_RESULTS.get(kind), config="{not json" if kind == "config" else None)
        if kind == "memory":
            (out / "memory" / "random" / "seed0").mkdir(parents=True)
            (out / "memory" / "random" / "seed0" / "step00.pt").write_bytes(b"not a torch file")
    (tmp_path / "bystander.txt").write_text("must survive\n")
    before = snapshot(tmp_path)
    status, _, err = run_cli(run_main, argv_for(extra, out), capsys)
    assert_clean_refusal(status, err, before, snapshot(tmp_path), words)
    if state is None:
        assert not out.exists()  # nothing was written, not even config.json


def test_an_option_typo_leaves_no_trace_and_the_corrected_command_runs(tmp_path, capsys, run_main):
    out = tmp_path / "run"
    argv = argv_for(["--memory", "dm", "--iterations", "1", "--option", "dm.batch_rea=8"], out)
    status, _, err = run_cli(run_main, argv, capsys)
    assert status == 2 and "unknown option(s) batch_rea for DMConfig" in err and not out.exists()
    fixed = [a.replace("batch_rea=", "batch_real=") for a in argv]
    status, stdout, err = run_cli(run_main, fixed, capsys)
    assert status == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["rows"] == 2


def write_results(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="") if isinstance(text, str) else path.write_bytes(text)
    return path


REPORT_CASES = {
    "missing-file": (None, "no results file"),
    "wrong-columns": ("a,b\n1,2\n", "not a continual results file"),
    "binary-garbage": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a readable results file"),
    "empty-file": ("", "not a continual results file"),
    "header-only": (HEADER, "hold no rows"),
    "short-row": (HEADER + "digits,random,2\n", "line 2"),
    "text-step": (HEADER + GOOD_ROW.replace(",0,5,", ",first,5,"), "line 2"),
    "accuracy-above-one": (HEADER + GOOD_ROW.replace("0.500000,0.500000", "1.5,0.5"), "not a fraction"),
    "step-beyond-steps": (HEADER + GOOD_ROW.replace("2,1,0,0,0,5", "2,1,0,0,7,5"), "step 7 of 2 steps"),
    "experience-count-mismatch": (HEADER + GOOD_ROW.replace(",0.500000,fp32", ",0.5 0.4,fp32"),
                                  "2 experience accuracies at step 0"),
    "unclosed-quote": (HEADER + 'digits,"random,2,1,0,0,0,5,0.5,0.5,fp32\n', "line"),
    "old-layout-text-accuracy": ("dataset,method,steps,ipc,seed,run,step,classes_seen,accuracy\n"
                                 "digits,dm,2,1,0,0,0,5,n/a\n", "could not convert"),
}


@pytest.mark.parametrize("name", sorted(REPORT_CASES))
def test_reports_continual_refuses_bad_csvs(name, tmp_path, capsys):
    from reports.continual import main

    content, words = REPORT_CASES[name]
    results = tmp_path / "results.csv"
    if content is not None:
        write_results(results, content)
    out = tmp_path / "report"
    out.mkdir()
    (out / "figure6.png").write_bytes(b"an earlier figure")
    before = snapshot(tmp_path)
    status, _, err = run_cli(main, [str(results), "--out", str(out)], capsys)
    assert_clean_refusal(status, err, before, snapshot(tmp_path), words)


def test_reports_continual_refuses_an_out_that_is_a_file(tmp_path, capsys):
    from reports.continual import main

    results = write_results(tmp_path / "results.csv", HEADER + GOOD_ROW)
    target = tmp_path / "report.png"
    target.write_bytes(b"keep me")
    before = snapshot(tmp_path)
    status, _, err = run_cli(main, [str(results), "--out", str(target)], capsys)
    assert_clean_refusal(status, err, before, snapshot(tmp_path), "is a file")


def test_python_m_reports_continual_gives_one_line(tmp_path):
    bad = write_results(tmp_path / "results.csv", HEADER + GOOD_ROW.replace("0.500000,0.500000", "x,y"))
    done = subprocess.run([sys.executable, "-m", "reports", "continual", str(bad), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(tmp_path), "MPLBACKEND": "Agg"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "line 2" in done.stderr
    assert not (tmp_path / "o").exists()


def test_old_results_files_are_still_read_and_appended_in_the_new_layout(tmp_path):
    from continual.results import COLUMNS, ResultsTable, read_results

    path = tmp_path / "results.csv"
    path.write_text("dataset,method,steps,ipc,seed,run,step,classes_seen,accuracy\n"
                    "cifar100,dm,5,20,0,0,0,20,0.61\n")
    (row,) = read_results(path)
    assert row["accuracy_fraction"] == 0.61 and row["experience_accuracy_fraction"] == []
    table = ResultsTable(path)
    assert table.done("dm", 5, 0, 0, 0)
    table.add({"dataset": "cifar100", "method": "dm", "steps": 5, "ipc": 20, "seed": 0, "run": 0, "step": 1,
               "classes_seen": 40, "accuracy_fraction": 0.5, "experience_accuracy_fraction": [0.4, 0.6],
               "precision": "fp32"})
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS) and [r["accuracy_fraction"] for r in rows] == ["0.610000", "0.500000"]
    assert rows[1]["experience_accuracy_fraction"] == "0.400000 0.600000"
