"""nas/ fidelity and run-folder safety: proxy-trained test accuracy in every row, precision, ground truth >= 1 epoch,
proxies named by provenance, concurrent searches into one run directory, Ctrl-C and resume.

Searches run on scikit-learn's digits (offline) with the 4-architecture ``micro`` space and tiny budgets, on CPU.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dm_core import DMError, SyntheticSet, make_set
from nas.analysis import summarize_method
from nas.groundtruth import main as groundtruth_main
from nas.results import TrialRecord, TrialStore, read_records
from nas.rundir import RunDir
from nas.search import SearchConfig, run_search
from nas.search import main as search_main

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_search(out, **overrides) -> SearchConfig:
    fields = dict(dataset="digits", space="micro", proxy="random5", epochs=1, repeats=1, device="cpu", out=str(out),
                  progress=False)
    return SearchConfig(**{**fields, **overrides})


def rec(arch: str, repeat: int, val: float, test: float | None, proxy: str = "dm10") -> TrialRecord:
    return TrialRecord(proxy, arch, 1, 32, "relu", "none", "avgpool", repeat, repeat, "e10-b250", 100, 10, val, test,
                       1.0)


# --- issue 9 point 5: rank by proxy validation, correlate proxy-trained test with whole-trained test ----------------

def test_every_proxy_trial_records_its_test_accuracy_and_precision(tmp_path):
    summary = run_search(tiny_search(tmp_path / "run"))
    with summary.results.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert {"val_acc_fraction", "test_acc_fraction", "precision", "augment", "train_iterations"} \
        <= set(reader.fieldnames)
    assert not {"val_acc", "test_acc"} & set(reader.fieldnames)  # a column of fractions says so in its name
    assert "steps" not in reader.fieldnames  # one word per idea: "steps" are continual steps
    assert len(rows) == 4 and all(r["precision"] == "fp32" for r in rows)
    tests = [float(r["test_acc_fraction"]) for r in rows]
    assert all(0 < t <= 1 for t in tests) and len(set(tests)) > 1  # measured, per architecture


def test_summary_ranks_by_validation_and_correlates_test_against_test():
    # validation puts a > b > c > d; proxy-trained test says d > c > b > a; the whole-data truth says a > b > c > d
    records = [rec(a, 0, v, t) for a, v, t in (("a", 0.9, 0.1), ("b", 0.8, 0.2), ("c", 0.7, 0.3), ("d", 0.6, 0.4))]
    truth = {"a": 0.99, "b": 0.98, "c": 0.97, "d": 0.96}
    s = summarize_method("dm10", "e10-b250", records, truth, 100, 0.0, fraction=1.0)
    assert s.selected == "a" and s.top == ["a", "b", "c", "d"]  # ranked by validation
    assert s.spearman_top_k == pytest.approx(-1.0)  # test vs test (validation vs test would be +1)
    assert (s.selected_proxy_val, s.selected_proxy_test, s.selected_whole_test) == (0.9, 0.1, 0.99)
    with pytest.raises(DMError, match="no proxy-trained test accuracy"):
        summarize_method("dm10", "e10-b250", [rec("a", 0, 0.9, None)], truth, 100, 0.0)


def test_trial_files_of_the_old_format_are_refused_with_one_clear_message(tmp_path):
    old = tmp_path / "results.csv"
    old.write_text("proxy,arch,depth,width,act,norm,pool,repeat,seed,budget,train_images,steps,val_acc,test_acc,"
                   "seconds\nrandom10,convnet-d1-w32-relu-none-avgpool,1,32,relu,none,avgpool,0,0,e5-b250,100,5,"
                   "0.5,,1.0\n")
    with pytest.raises(DMError, match="older nas"):
        read_records(old)


def test_a_bf16_budget_is_its_own_resume_key():
    from dm_core import TrainConfig
    from nas.trial import TrainTask

    x = torch.zeros(4, 1, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    fp32 = TrainTask("dm10", x, y, TrainConfig(epochs=5, batch_size=250), x, y, 10)
    bf16 = TrainTask("dm10", x, y, TrainConfig(epochs=5, batch_size=250, precision="bf16"), x, y, 10)
    assert (fp32.budget, bf16.budget) == ("e5-b250-r2", "e5-b250-bf16-r2")  # r2: the trainer's recipe version


# --- issue 9 point 6: the ground truth trains at least one epoch ----------------------------------------------------

def test_groundtruth_refuses_fewer_steps_than_one_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    run_search(tiny_search(out))
    before = (out / "results.csv").read_bytes()
    # digits: 1,293 training images at batch 250 = 6 steps per epoch
    assert groundtruth_main(["--out", str(out), "--all", "--space", "micro", "--train-iterations", "5", "--device",
                             "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "less than one epoch" in err[0] and "--train-iterations 6" in err[0]
    assert not (out / "groundtruth.csv").exists() and (out / "results.csv").read_bytes() == before


# --- issue 11 point 5: proxies named by provenance ------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_set_files(tmp_path_factory):
    from nas.data import load_search_data

    folder = tmp_path_factory.mktemp("sets")
    train = load_search_data("digits", None, 0.1, 0).train
    seven = make_set("random", train, 7, seed=0)
    files = {"random7": seven.save(folder / "random7.pt")}
    files["bare"] = SyntheticSet(seven.images, seven.labels, {"dataset": train.name}).save(folder / "bare.pt")
    lying = SyntheticSet(seven.images, seven.labels, {**seven.meta, "ipc": 3})
    files["lying"] = lying.save(folder / "lying.pt")
    dm7 = SyntheticSet(seven.images, seven.labels, {**seven.meta, "method": "dm", "iterations": 1})
    files["dm7"] = dm7.save(folder / "dm7.pt")
    return files


@pytest.mark.parametrize("proxy, file, message", [
    ("dm3", "dm7", "holds a dm set of 7 images per class, not dm3: name it dm7"),  # the example
    ("random3", "random7", "holds a random set of 7 images per class, not random3: name it random7"),
    ("dm7", "random7", "not dm7"),
    ("dm2", "bare", "custom:NAME"),
    ("random3", "lying", "says 3 images per class but holds 70 images"),
])
def test_a_proxy_name_that_does_not_match_its_file_is_refused(tmp_path, capsys, digits_set_files, proxy, file,
                                                              message):
    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--space", "micro", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert search_main([*argv, "--proxy", proxy, "--proxy-file", str(digits_set_files[file])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


def test_a_set_of_ones_own_is_custom_and_a_matching_name_is_accepted(tmp_path, digits_set_files):
    out = tmp_path / "run"
    run_search(tiny_search(out, proxy="custom:mine", proxy_file=str(digits_set_files["bare"])))
    run_search(tiny_search(out, proxy="random7", proxy_file=str(digits_set_files["random7"])))
    proxies = {r.proxy for r in read_records(out / "results.csv")}
    assert proxies == {"custom:mine", "random7"}
    info = json.loads((out / "run.json").read_text())
    assert info["proxies"]["random7"]["method"] == "random" and info["proxies"]["random7"]["ipc"] == 7
    assert info["proxies"]["custom:mine"]["images"] == 70
    with pytest.raises(DMError, match="proxy_file"):
        tiny_search(out, proxy="custom:mine").resolve()


# --- issue 11 point 6 / issue 12: concurrent writers lose nothing ---------------------------------------------------

def _record_many(path: str, name: str, n: int) -> None:
    run, store = RunDir(Path(path)), TrialStore(Path(path) / "results.csv")
    claim = {"dataset": "digits", "split_seed": 0, "val_fraction": 0.1}
    for i in range(n):
        run.record_proxy(f"{name}-{i}", {"images": i, "make_seconds": float(i)}, claim)
        store.add(rec(f"{name}-arch{i}", 0, 0.5, 0.5, proxy=name))


def test_concurrent_writers_of_run_json_and_results_lose_no_entry(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_many, args=(str(tmp_path), f"p{k}", 15)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    info = json.loads((tmp_path / "run.json").read_text())
    assert len(info["proxies"]) == 60 and info["proxies"]["p3-14"]["make_seconds"] == 14.0
    assert len(read_records(tmp_path / "results.csv")) == 60


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}


def _start(argv: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_rows(proc: subprocess.Popen, csv_path: Path, rows: int = 1) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if csv_path.is_file() and len(csv_path.read_text().splitlines()) > rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"no row within 3 minutes, or it ended first: {proc.poll()} {proc.communicate()}")


def _interrupt(proc: subprocess.Popen, signum: int = signal.SIGINT) -> tuple[int, str]:
    """Ctrl-C (or SIGTERM, a cancelled job): one line, exit status 130 (143)."""
    assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    status, words = (130, "interrupted: ") if signum == signal.SIGINT else (143, "stopped by SIGTERM: ")
    assert proc.returncode == status and len(lines) == 1 and lines[0].startswith(words), err
    assert "rerun the same command to continue" in lines[0]
    return proc.returncode, err


def test_two_searches_at_once_lose_nothing_and_ctrl_c_resumes(tmp_path):
    """A random10 search runs in a subprocess; a random5 search into the same run directory runs here meanwhile;
    then the subprocess gets SIGINT (one line, exit 130) and the same command, run again, finishes its search."""
    out = tmp_path / "run"
    common = ["--dataset", "digits", "--space", "micro", "--device", "cpu", "--out", str(out), "--no-progress"]
    slow = ["nas.search", "--proxy", "random10", "--epochs", "30", "--repeats", "2", *common]
    proc = _start(slow, tmp_path)
    _wait_for_rows(proc, out / "results.csv")
    assert search_main(["--proxy", "random5", "--epochs", "1", "--repeats", "1", *common]) == 0  # meanwhile
    _interrupt(proc)
    saved = {r.key: r for r in read_records(out / "results.csv")}
    interrupted = [k for k in saved if k[0] == "random10"]
    assert 1 <= len(interrupted) < 8 and len(saved) == len(interrupted) + 4  # random5's 4 rows all there
    assert search_main(slow[1:]) == 0  # the same command resumes
    records = {r.key: r for r in read_records(out / "results.csv")}
    assert len(records) == 12 and all(records[k] == saved[k] for k in saved)  # nothing redone, nothing lost
    info = json.loads((out / "run.json").read_text())
    assert set(info["proxies"]) == {"random5", "random10"}
    assert all("make_seconds" in entry for entry in info["proxies"].values())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_in_groundtruth_is_one_line_and_the_same_command_resumes(tmp_path, capsys, signum):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"dataset": "digits", "split_seed": 0, "val_fraction": 0.1,
                                              "proxies": {}}))
    gt = ["--out", str(out), "--all", "--space", "micro", "--epochs", "3", "--repeats", "2", "--device", "cpu",
          "--no-progress"]
    proc = _start(["nas.groundtruth", *gt], tmp_path)
    _wait_for_rows(proc, out / "groundtruth.csv")
    _interrupt(proc, signum)
    saved = {r.key: r for r in read_records(out / "groundtruth.csv")}
    assert 1 <= len(saved) < 8
    capsys.readouterr()
    assert groundtruth_main(gt) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["architectures"] == 4
    records = {r.key: r for r in read_records(out / "groundtruth.csv")}
    assert len(records) == 8 and all(records[k] == saved[k] for k in saved)


def test_a_results_file_of_the_previous_layout_is_read_and_upgraded_by_the_next_append(tmp_path):
    """results.csv as nas wrote it before the augment column (steps instead of train_iterations): its rows are read
    as trained with the six-group DSA strategy, a search into the folder reuses them, and its next append rewrites
    the file in the current layout."""
    out = tmp_path / "run"
    six = "color_crop_cutout_flip_scale_rotate"  # what the previous layout's rows were trained with
    first = run_search(tiny_search(out, space="depth=1;width=32;act=relu;norm=none,instancenorm;pool=avgpool",
                                   augment=six))
    rows = read_records(first.results)
    old = ("proxy,arch,depth,width,act,norm,pool,repeat,seed,budget,precision,train_images,steps,val_acc_fraction,"
           "test_acc_fraction,seconds\n")
    old += "".join(f"{r.proxy},{r.arch},{r.depth},{r.width},{r.act},{r.norm},{r.pool},{r.repeat},{r.seed},{r.budget},"
                   f"{r.precision},{r.train_images},{r.train_iterations},{r.val_acc!r},{r.test_acc!r},{r.seconds!r}\n"
                   for r in rows)
    first.results.write_text(old)
    assert read_records(first.results) == rows  # the same records, augment filled in
    summary = run_search(tiny_search(out, augment=six))  # micro: the two old architectures and two new ones
    assert summary.trials == 4
    text = summary.results.read_text()
    assert text.startswith("proxy,arch,depth,width,act,norm,pool,repeat,seed,budget,precision,augment,train_images,"
                           "train_iterations,val_acc_fraction,test_acc_fraction,seconds\n")
    again = {r.key: r for r in read_records(summary.results)}
    assert len(again) == 4 and all(again[r.key] == r for r in rows)


# --- issue 20 point 7: a proxy file may not hold (or have seen) the search's validation images -----------------------

def test_a_proxy_file_that_could_have_seen_validation_images_is_refused_with_the_command_that_makes_a_valid_one(
        tmp_path, capsys):
    """The issue's example: a random 5-per-class file made from the whole training split (so some of its 50 images
    are validation images of the search) was accepted. Now it is refused in one line that gives the command making
    a valid file; that command's file is accepted."""
    import shlex

    from dm_core.cli import main as dm_main

    whole = tmp_path / "random5.pt"
    assert dm_main(["condense", "--dataset", "digits", "--method", "random", "--ipc", "5", "--out", str(whole),
                    "--no-progress"]) == 0
    search = ["--dataset", "digits", "--proxy", "random5", "--space", "micro", "--epochs", "1", "--repeats", "1",
              "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")]
    capsys.readouterr()
    assert search_main([*search, "--proxy-file", str(whole)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "may hold the search's validation images" in err[0], err
    command = shlex.split(err[0].split("e.g. ", 1)[1])
    assert command[:3] == ["python", "-m", "dm_core"] and "--val-fraction" in command and "--split-seed" in command
    assert dm_main(command[3:] + ["--no-progress"]) == 0  # the command as given, run
    made = Path(command[command.index("--out") + 1])
    capsys.readouterr()
    assert search_main([*search, "--proxy-file", str(made)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["architectures_ranked"] == 4
    other = tmp_path / "other-split.pt"
    assert dm_main(["condense", "--dataset", "digits", "--method", "random", "--ipc", "5", "--val-fraction", "0.1",
                    "--split-seed", "1", "--out", str(other), "--no-progress"]) == 0
    capsys.readouterr()
    assert search_main([*search, "--proxy-file", str(other)]) == 2
    assert "another split (--val-fraction 0.1, --split-seed 1)" in capsys.readouterr().err


def test_a_set_without_provenance_is_checked_against_the_validation_images(tmp_path, capsys):
    from nas.data import load_search_data

    data = load_search_data("digits", None, 0.1, 0)
    five = make_set("random", data.train, 5, seed=0)
    clean = SyntheticSet(five.images, five.labels, {"dataset": "digits"}).save(tmp_path / "clean.pt")
    leaked = five.images.clone()
    leaked[0] = data.x_val[data.y_val == int(five.labels[0])][0]  # one validation image of the right class
    dirty = SyntheticSet(leaked, five.labels, {"dataset": "digits"}).save(tmp_path / "dirty.pt")
    search = ["--dataset", "digits", "--proxy", "custom:mine", "--space", "micro", "--epochs", "1", "--repeats", "1",
              "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")]
    assert search_main([*search, "--proxy-file", str(dirty)]) == 2
    assert "holds images of the search's validation split" in capsys.readouterr().err
    assert search_main([*search, "--proxy-file", str(clean)]) == 0
