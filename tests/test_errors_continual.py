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

from dm_core import DMError

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
    cfg = ContinualConfig(out=folder, dataset="digits", steps=2, methods=("random",), ipc=1, seeds=(0,), repeats=1,
                          epochs=1, model=TINY_NET, max_train_per_class=20, device="cpu", progress=False)
    (folder / "config.json").write_text(config if config is not None else json.dumps(cfg.to_json(), indent=2))
    results = results if results is not None else HEADER + GOOD_ROW
    if isinstance(results, bytes):
        (folder / "results.csv").write_bytes(results)
    else:
        (folder / "results.csv").write_text(results)
    (folder / "log.txt").write_text("earlier log lines\n")
    return folder


BASE = ["--dataset", "digits", "--steps", "2", "--memory", "random", "--ipc", "1", "--seeds", "0", "--repeats", "1",
        "--epochs", "1", "--model", TINY_NET, "--max-train-per-class", "20", "--device", "cpu", "--no-progress"]

# (arguments replacing / added to BASE, what the run directory holds beforehand, expected words in the error)
RUN_CASES = {
    "steps-not-dividing": (["--steps", "3"], None, "does not divide"),
    "ipc-above-class-size": (["--ipc", "1000"], None, "ipc 1000 is more than"),
    "ipc-zero": (["--ipc", "0"], None, "--ipc: must be at least 1"),
    "missing-npz": (["--dataset", "npz:/no/such/file.npz"], None, "no array file"),
    "unknown-dataset": (["--dataset", "nosuchdata"], None, "unknown dataset"),
    "options-for-unknown-method": (["--option", "gdumb.lr=1"], None, "unknown method(s) gdumb"),
    "typo-in-dm-option": (["--memory", "dm", "--option", "dm.bogus=1"], None, "unknown option(s) bogus for dm"),
    "typo-in-unused-method-option": (["--option", "dsa.outer_lop=3"], None, "unknown option(s) outer_lop for dsa"),
    "negative-dm-iterations": (["--memory", "dm", "--option", "dm.iterations=-1"], None, "iterations"),
    "text-dm-iterations": (["--memory", "dm", "--option", "dm.iterations=abc"], None, "'abc'"),
    "random-takes-no-options": (["--option", "random.iterations=3"], None, "unknown option(s) iterations for random"),
    "herding-epochs-zero": (["--memory", "herding", "--option", "herding.epochs=0"], None, "herding: epochs must be"),
    "unknown-builder-model": (["--memory", "dm", "--option", "dm.model=nosuchnet"], None, "nosuchnet"),
    "seed-as-builder-option": (["--memory", "dm", "--option", "dm.seed=3"], None, "cannot be set"),
    "unknown-model": (["--model", "nosuchnet"], None, "nosuchnet"),
    "repeats-zero": (["--repeats", "0"], None, "--repeats: must be at least 1"),
    "runs-renamed": (["--runs", "2"], None, "--runs was renamed: use --repeats"),
    "epochs-zero": (["--epochs", "0"], None, "--epochs: must be at least 1"),
    "repeated-seeds": (["--seeds", "1", "1"], None, "distinct"),
    "negative-seed": (["--seeds", "-1"], None, "a seed is an integer from 0"),
    "threads-zero": (["--threads", "0"], None, "--threads: must be at least 1"),
    "unknown-augment": (["--augment", "color_blur"], None, "blur"),
    "unknown-device": (["--device", "tpu"], None, "tpu"),
    "unknown-memory": (["--memory", "gdumb"], None, "invalid choice"),
    "unknown-logger": (["--logger", "text,wandb"], None, "unknown logger wandb"),
    "unknown-precision": (["--precision", "fp16"], None, "invalid choice"),
    "option-without-equals": (["--option", "dm.iterations"], None, "METHOD.KEY=VALUE"),
    "out-is-a-file": (["--out", "{tmp}/afile"], "file", "is a file"),
    "run-dir-other-ipc": (["--ipc", "2"], "run", "ipc 1 -> 2"),
    "run-dir-garbage-results": ([], "run:garbage", "not a continual-results/3 table"),
    "run-dir-binary-results": ([], "run:binary", "not a readable continual-results table"),
    "run-dir-truncated-results": ([], "run:truncated", "middle of a line"),
    "run-dir-text-accuracy": ([], "run:text", "accuracy_fraction = 'high' is not a number"),
    "run-dir-accuracy-not-fraction": ([], "run:percent", "not a fraction"),
    "run-dir-short-row": ([], "run:short", "line 2: ipc is empty"),
    "run-dir-wrong-columns": ([], "run:columns", "not a continual-results/3 table (missing dataset"),
    "run-dir-duplicated-row": ([], "run:duplicated", "lines 2 and 3 record the same unit"),
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
    "duplicated": HEADER + GOOD_ROW + GOOD_ROW.replace("0.500000,0.500000", "0.600000,0.600000"),
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
    assert status == 2 and "unknown option(s) batch_rea for dm" in err and not out.exists()
    fixed = [a.replace("batch_rea=", "batch_real=") for a in argv]
    status, stdout, err = run_cli(run_main, fixed, capsys)
    assert status == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["rows"] == 2


def write_results(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="") if isinstance(text, str) else path.write_bytes(text)
    return path


REPORT_CASES = {
    "missing-file": (None, "no results file"),
    "wrong-columns": ("a,b\n1,2\n", "not a continual-results/3 table (missing dataset"),
    "binary-garbage": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a readable continual-results table"),
    "empty-file": ("", "hold no rows"),  # 0 bytes: what a failed write of an earlier version left; no row in it
    "blank-file": ("\n\n", "only blank lines"),
    "header-only": (HEADER, "hold no rows"),
    "short-row": (HEADER + "digits,random,2\n", "line 2"),
    "text-step": (HEADER + GOOD_ROW.replace(",0,5,", ",first,5,"), "line 2"),
    "accuracy-above-one": (HEADER + GOOD_ROW.replace("0.500000,0.500000", "1.5,0.5"), "not a fraction"),
    "step-beyond-steps": (HEADER + GOOD_ROW.replace("2,1,0,0,0,5", "2,1,0,0,7,5"), "step 7 of 2 steps"),
    "experience-count-mismatch": (HEADER + GOOD_ROW.replace(",0.500000,fp32", ",0.5 0.4,fp32"),
                                  "2 experience accuracies at step 0"),
    "unclosed-quote": (HEADER + 'digits,"random,2,1,0,0,0,5,0.5,0.5,fp32\n', "not a readable CSV"),
    "old-layout-text-accuracy": ("dataset,method,steps,ipc,seed,run,step,classes_seen,accuracy\n"
                                 "digits,dm,2,1,0,0,0,5,n/a\n", "line 2: accuracy_fraction = 'n/a' is not a number"),
    "duplicated-row": (HEADER + GOOD_ROW + GOOD_ROW, "lines 2 and 3 record the same unit"),
    "conflicting-rows": (HEADER + GOOD_ROW + GOOD_ROW.replace("0.500000,0.500000", "0.700000,0.700000"),
                         "lines 2 and 3 record the same unit"),
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
    (row,) = read_results(path).to_dict("records")
    assert row["accuracy_fraction"] == 0.61 and row["experience_accuracy_fraction"] is None
    assert row["repeat"] == 0 and row["augment"] == "color_crop_cutout_flip_scale_rotate" and row["precision"] == "fp32"
    table = ResultsTable(path)
    assert table.done("dm", 5, 0, 0, 0)
    table.add({"dataset": "cifar100", "method": "dm", "steps": 5, "ipc": 20, "seed": 0, "repeat": 0, "step": 1,
               "classes_seen": 40, "accuracy_fraction": 0.5, "experience_accuracy_fraction": [0.4, 0.6],
               "precision": "fp32", "augment": "color_crop_cutout_flip_scale_rotate"})
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS) and [r["accuracy_fraction"] for r in rows] == ["0.61", "0.5"]
    assert rows[1]["experience_accuracy_fraction"] == "0.4 0.6"
    assert [r["repeat"] for r in rows] == ["0", "0"] and rows[0]["experience_accuracy_fraction"] == ""


# A run folder as today's main (results version 2, config.json with "runs") writes it: `continual.run --dataset
# digits --steps 5 --memory dm --ipc 5 --seeds 0 --runs 1 --epochs 50 --iterations 100 --model convnet-w32`.
MAIN_RESULTS = """\
dataset,method,steps,ipc,seed,run,step,classes_seen,accuracy_fraction,experience_accuracy_fraction,precision
digits,dm,5,5,0,0,0,2,1.000000,1.000000,fp32
digits,dm,5,5,0,0,1,4,0.986395,0.983871 0.988235,fp32
digits,dm,5,5,0,0,2,6,0.917073,0.967742 0.917647 0.862069,fp32
digits,dm,5,5,0,0,3,8,0.896057,0.838710 0.905882 0.844828 0.972973,fp32
digits,dm,5,5,0,0,4,10,0.880556,0.741935 0.882353 0.862069 0.959459 0.925926,fp32
"""
MAIN_CONFIG = {"out": "runs/qs_continual", "dataset": "digits", "data_root": None, "steps": 5, "methods": ["dm"],
               "ipc": 5, "seeds": [0], "runs": 1, "epochs": 50, "iterations": 100, "model": "convnet-w32",
               "max_train_per_class": None, "method_options": {}, "precision": "fp32", "compile": "auto",
               "loggers": ["text"], "device": "auto", "threads": None, "progress": False}


def main_run_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.csv").write_text(MAIN_RESULTS)
    (folder / "config.json").write_text(json.dumps(MAIN_CONFIG, indent=2) + "\n")
    return folder


def test_a_run_folder_written_by_todays_main_is_read_and_refused_to_continue_in_one_line(tmp_path):
    """results.csv (``run``, no ``augment``) and config.json (``runs``, no ``augment``) of the previous main: the rows
    are read in the current layout (so reports still read the folder) and the next append rewrites the file in the
    current layout; continuing the run is refused in one line, since its rows were trained with the earlier recipe
    (E passes, momentum kept at the drop), which rows of this version must not be mixed with."""
    from continual.config import ContinualConfig, prepare, read_settings
    from continual.results import COLUMNS, ResultsTable, read_results

    out = main_run_folder(tmp_path / "qs")
    rows = read_results(out / "results.csv")
    assert rows["repeat"].tolist() == [0] * 5 and rows["step"].tolist() == list(range(5))
    assert rows["accuracy_fraction"].tolist() == [1.0, 0.986395, 0.917073, 0.896057, 0.880556]
    assert rows["experience_accuracy_fraction"].iloc[4] == (0.741935, 0.882353, 0.862069, 0.959459, 0.925926)
    assert set(rows["augment"]) == {"color_crop_cutout_flip_scale_rotate"} and set(rows["precision"]) == {"fp32"}
    assert read_settings(out)["repeats"] == 1 and "runs" not in read_settings(out)
    same = dict(out=out, dataset="digits", steps=5, methods=("dm",), ipc=5, seeds=(0,), repeats=1, epochs=50,
                iterations=100, model="convnet-w32", device="cpu", progress=False)
    # the digits' strategy is now the one without flips, and the trainer follows the reference's schedule: both
    # differences are named, and the recipe's says the folder cannot be continued
    with pytest.raises(DMError, match="augment 'color_crop_cutout_flip_scale_rotate' -> 'color_crop_cutout_scale_"
                                      "rotate'; train_recipe 1 -> 2; this version trains as the reference does\\): "
                                      "use another run folder \\(reports still read this one\\)"):
        prepare(ContinualConfig(**same))
    same["augment"] = "color_crop_cutout_flip_scale_rotate"
    with pytest.raises(DMError, match="train_recipe 1 -> 2"):
        prepare(ContinualConfig(**same))  # its strategy said: still another recipe
    with pytest.raises(DMError, match="epochs 50 -> 60"):
        prepare(ContinualConfig(**{**same, "epochs": 60}))
    table = ResultsTable(out / "results.csv")
    assert all(table.done("dm", 5, 0, 0, t) for t in range(5)) and not table.done("dm", 5, 0, 1, 0)
    table.add({"dataset": "digits", "method": "dm", "steps": 5, "ipc": 5, "seed": 0, "repeat": 1, "step": 0,
               "classes_seen": 2, "accuracy_fraction": 0.99, "experience_accuracy_fraction": [0.99],
               "precision": "fp32", "augment": "color_crop_cutout_flip_scale_rotate"})
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 7
    assert lines[5] == ("digits,dm,5,5,0,0,4,10,0.880556,0.741935 0.882353 0.862069 0.959459 0.925926,fp32,"
                        "color_crop_cutout_flip_scale_rotate")


@pytest.mark.parametrize("source, dm_row", [
    ("continual_mnist", "| mnist | 5 | 2 | DM | 10 | 3 | 90.51 \u00b1 0.98 | 3.64 \u00b1 0.65 | - |"),
    # written by an earlier continual.run (results version 2: a "run" column, no augment column)
    ("continual_mnist/results_before.csv",
     "| mnist | 5 | 2 | DM | 10 | 3 | 89.18 \u00b1 0.55 | 4.74 \u00b1 0.29 | - |"),
], ids=["today", "results-version-2"])
def test_the_reduced_mnist_results_in_the_repository_are_reported(tmp_path, capsys, source, dm_row):
    from reports.cli import main

    status, out, err = run_cli(main, ["continual", str(ROOT / "reports" / source), "--out",
                                      str(tmp_path / "report")], capsys)
    assert status == 0, err
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["report"] == "continual" and figures["out"] == str(tmp_path / "report")
    assert str(tmp_path / "report" / "final_accuracy.md") in figures["files"]
    table = (tmp_path / "report" / "final_accuracy.md").read_text()
    assert dm_row in table


def test_reports_continual_refuses_a_unit_recorded_in_two_files(tmp_path, capsys):
    from reports.continual import main

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    write_results(first / "results.csv", HEADER + GOOD_ROW)
    write_results(second / "results.csv", HEADER + GOOD_ROW.replace("0.500000,0.500000", "0.600000,0.600000"))
    before = snapshot(tmp_path)
    status, _, err = run_cli(main, [str(first), str(second), "--out", str(tmp_path / "report")], capsys)
    assert_clean_refusal(status, err, before, snapshot(tmp_path),
                         f"{first / 'results.csv'}, line 2 and {second / 'results.csv'}, line 2 record the same unit")
    status, _, err = run_cli(main, [str(first), str(first / "results.csv"), "--out", str(tmp_path / "report")], capsys)
    assert_clean_refusal(status, err, before, snapshot(tmp_path), "record the same unit")  # one file given twice


def test_runs_was_renamed_repeats(tmp_path, capsys, run_main):
    before = snapshot(tmp_path)
    status, out, err = run_cli(run_main, argv_for(["--runs", "1"], tmp_path / "run"), capsys)
    assert_clean_refusal(status, err, before, snapshot(tmp_path))
    assert err == "error: --runs was renamed: use --repeats\n" and out == ""


def test_the_json_line_is_the_last_line_of_stdout(tmp_path, capsys, run_main):
    out = tmp_path / "run"
    status, stdout, err = run_cli(run_main, argv_for([], out), capsys)
    assert status == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == {"results": str(out / "results.csv"), "rows": 2,
                       "final_accuracy_percent": {"random": summary["final_accuracy_percent"]["random"]}}
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert summary["final_accuracy_percent"]["random"] == round(100 * float(rows[-1]["accuracy_fraction"]), 2)
    stored = json.loads((out / "config.json").read_text())
    assert stored["repeats"] == 1 and stored["augment"] == "color_crop_cutout_scale_rotate"  # the digits' strategy


def test_library_errors_speak_of_arguments_not_flags(cl):
    """The Python API is refused in its own words (no ``--device``, no ``--out``)."""
    from continual.config import ContinualConfig, prepare

    with pytest.raises(DMError) as refused:
        cl.CondensedMemory("random", ipc=2, device="nosuchdevice")
    assert "--" not in str(refused.value) and "nosuchdevice" in str(refused.value)
    with pytest.raises(DMError) as refused:
        prepare(ContinualConfig(dataset="digits", repeats=0))
    assert str(refused.value).startswith("repeats must be") and "--" not in str(refused.value)
