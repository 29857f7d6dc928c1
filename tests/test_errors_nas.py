"""Bad input to nas.search, nas.groundtruth and ``reports nas``: one ``error:`` line, exit 2, no traceback, and
every file that was there before is byte-identical afterwards (nothing written, nothing lost).

Each case builds its inputs in a fresh folder (a hand-written run directory: no training), runs the command's
``main`` in-process through tests/cli_harness.py, and checks the refusal.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_harness import assert_clean_refusal, run_cli, snapshot

from dm_core import SyntheticSet, make_set
from nas.groundtruth import main as groundtruth_main
from nas.results import TrialRecord, TrialStore
from nas.search import main as search_main
from nas.space import NAMED_SPACES
from reports.nas import main as report_main

MAINS = {"search": search_main, "groundtruth": groundtruth_main, "report": report_main}
GOOD_ROW = "random5,convnet-d1-w32-relu-none-avgpool,1,32,relu,none,avgpool,0,0,e1-b250,fp32,50,1,0.5,0.5,1.0"
HEADER = ("proxy,arch,depth,width,act,norm,pool,repeat,seed,budget,precision,train_images,steps,val_acc_fraction,"
          "test_acc_fraction,seconds")


pytestmark = pytest.mark.usefixtures("one_thread")


def valid_run(root: Path) -> Path:
    """A finished run directory on digits: random5 over the micro space and a ground truth for it (hand-written)."""
    run = root / "run"
    results, truth = TrialStore(run / "results.csv"), TrialStore(run / "groundtruth.csv")
    for i, spec in enumerate(NAMED_SPACES["micro"].specs()):
        fields = (spec.name, spec.depth, spec.width, spec.act, spec.norm, spec.pool, 0, 0)
        results.add(TrialRecord("random5", *fields, "e1-b250", 50, 1, 0.5 + 0.01 * i, 0.4 + 0.02 * i, 1.0))
        truth.add(TrialRecord("groundtruth", *fields, "e1-b250", 1293, 6, 0.8 + 0.01 * i, 0.8 + 0.01 * i, 2.0))
    for lock in run.glob("*.lock"):
        lock.unlink()
    (run / "run.json").write_text(json.dumps({"dataset": "digits", "split_seed": 0, "val_fraction": 0.1,
                                              "proxies": {"random5": {"images": 50, "make_seconds": 0.1}}}))
    return run


def set_file(root: Path, meta: dict | None = None) -> Path:
    """A random 2-images-per-class set of the digits training split (its provenance replaced by ``meta`` if given)."""
    from nas.data import load_search_data

    chosen = make_set("random", load_search_data("digits", None, 0.1, 0).train, 2, seed=0)
    return SyntheticSet(chosen.images, chosen.labels, chosen.meta if meta is None else meta).save(root / "set.pt")


def write(root: Path, name: str, text: str | bytes) -> Path:
    path = valid_run(root) / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path.parent


def search(*extra: str) -> Callable[[Path], list[str]]:
    base = ["--dataset", "digits", "--space", "micro", "--proxy", "random5", "--epochs", "1", "--repeats", "1",
            "--device", "cpu", "--no-progress"]
    return lambda root: [*base, "--out", str(root / "run"), *extra]


def search_with(prepare: Callable[[Path], object], *extra: str) -> Callable[[Path], list[str]]:
    def argv(root: Path) -> list[str]:
        made = prepare(root)
        return [*search()(root), *[str(made) if a == "{}" else a for a in extra]]
    return argv


def command_on(prepare: Callable[[Path], Path], *extra: str, flag: str = "--out") -> Callable[[Path], list[str]]:
    return lambda root: [flag, str(prepare(root)), *extra]


def gt(prepare: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    return command_on(prepare, "--device", "cpu", "--no-progress", *extra)


def report(prepare: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    return lambda root: [str(prepare(root)), "--out", str(root / "report"), *extra]


def run_json(text: str) -> Callable[[Path], Path]:
    return lambda root: write(root, "run.json", text)


def results(text: str | bytes, name: str = "results.csv") -> Callable[[Path], Path]:
    return lambda root: write(root, name, text)


def only_run_json(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"dataset": "digits", "split_seed": 0, "val_fraction": 0.1,
                                              "proxies": {}}))
    return run


def a_file(root: Path) -> Path:
    path = root / "run"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder")
    return path


GARBAGE = b"\x89\xff\x00\x17 not a csv \x00\x00"
TRUNCATED = f"{HEADER}\n{GOOD_ROW}\n{GOOD_ROW[:40]}"
LEGACY = ("proxy,arch,depth,width,act,norm,pool,repeat,seed,budget,train_images,steps,val_acc,test_acc,seconds\n"
          "random5,convnet-d1-w32-relu-none-avgpool,1,32,relu,none,avgpool,0,0,e1-b250,50,1,0.5,,1.0\n")
PERCENT = f"{HEADER}\n{GOOD_ROW.replace(',0.5,0.5,', ',95.3,94.1,')}\n"
NO_TEST = f"{HEADER}\n{GOOD_ROW.replace(',0.5,0.5,', ',0.5,,')}\n"
WORDS = f"{HEADER}\n{GOOD_ROW.replace(',1,32,', ',one,32,')}\n"
DUPLICATED = f"{HEADER}\n{GOOD_ROW}\n{GOOD_ROW}\n"  # one training twice: never a second repeat
CONFLICTING = f"{HEADER}\n{GOOD_ROW}\n{GOOD_ROW.replace(',0.5,0.5,', ',0.6,0.5,')}\n"

CASES = [
    # nas.search
    ("search", "unknown-proxy", search("--proxy", "bogus7"), "unknown proxy"),
    ("search", "empty-space", search("--space", "depth="), None),
    ("search", "unknown-space", search("--space", "nosuch"), "unknown search space"),
    ("search", "missing-npz", search("--dataset", "npz:/nonexistent/data.npz"), "no array file"),
    ("search", "zero-repeats", search("--repeats", "0"), "repeats must be at least 1"),
    ("search", "zero-epochs", search("--epochs", "0"), "epochs must be at least 1"),
    ("search", "val-fraction", search("--val-fraction", "1.5"), "--val-fraction"),
    ("search", "zero-max-trials", search("--max-trials", "0"), "--max-trials"),
    ("search", "missing-proxy-file", search("--proxy", "random2", "--proxy-file", "/nonexistent/set.pt"),
     "no proxy file"),
    ("search", "name-vs-file-ipc", search_with(set_file, "--proxy", "random3", "--proxy-file", "{}"),
     "not random3: name it random2"),
    ("search", "name-vs-file-method", search_with(set_file, "--proxy", "dm2", "--proxy-file", "{}"), "not dm2"),
    ("search", "custom-without-file", search("--proxy", "custom:mine"), "--proxy-file"),
    ("search", "custom-bad-name", search("--proxy", "custom:a/b"), "custom:NAME"),
    ("search", "file-with-whole", search_with(set_file, "--proxy", "whole", "--proxy-file", "{}"),
     "goes with a set proxy"),
    ("search", "unreadable-proxy-file",
     search_with(lambda r: (r / "x.pt").write_bytes(GARBAGE) and r / "x.pt", "--proxy", "dm2", "--proxy-file", "{}"),
     "not a readable synthetic-set file"),
    ("search", "file-without-provenance",
     search_with(lambda r: set_file(r, {"dataset": "digits"}), "--proxy", "random2", "--proxy-file", "{}"),
     "custom:NAME"),
    ("search", "file-of-another-dataset",
     search_with(lambda r: set_file(r, {"dataset": "mnist"}), "--proxy", "custom:x", "--proxy-file", "{}"),
     "made for dataset 'mnist'"),
    ("search", "out-is-a-file", search_with(a_file), "is a file"),
    ("search", "corrupt-run-json", search_with(run_json("{not json")), "unreadable"),
    ("search", "run-json-a-list", search_with(run_json("[1, 2]")), "not a NAS run file"),
    ("search", "run-of-another-split", search_with(run_json(json.dumps(
        {"dataset": "digits", "split_seed": 1, "val_fraction": 0.1, "proxies": {}}))), "holds a search on"),
    ("search", "binary-results", search_with(results(GARBAGE)), "not a readable nas-trials table"),
    ("search", "truncated-results", search_with(results(TRUNCATED)), "ends in the middle of a line"),
    ("search", "legacy-results", search_with(results(LEGACY)), "older nas"),
    ("search", "percent-results", search_with(results(PERCENT)), "not a fraction"),
    ("search", "damaged-groundtruth", search_with(results(WORDS, "groundtruth.csv")), "line 2: depth = 'one' is not"),
    ("search", "duplicated-row", search_with(results(DUPLICATED)), "lines 2 and 3 record the same unit"),
    ("search", "damaged-curves", search_with(results(GARBAGE, "curves.csv")), "not a readable nas-curves table"),
    ("search", "unknown-augment", search("--augment", "color_blur"), "unknown augmentation 'color_blur'"),
    # nas.groundtruth
    ("groundtruth", "no-run-dir", lambda r: ["--out", str(r / "nothing"), "--device", "cpu"],
     "not a NAS run directory"),
    ("groundtruth", "zero-iterations", gt(valid_run, "--train-iterations", "0"), "--train-iterations"),
    ("groundtruth", "old-steps-flag", gt(valid_run, "--steps", "300"), "--steps was renamed: use --train-iterations"),
    ("groundtruth", "zero-epochs", gt(valid_run, "--epochs", "0"), "epochs must be at least 1"),
    ("groundtruth", "zero-repeats", gt(valid_run, "--repeats", "0"), "repeats must be at least 1"),
    ("groundtruth", "unknown-augment", gt(valid_run, "--augment", "blur"), "unknown augmentation 'blur'"),
    ("groundtruth", "zero-fraction", gt(valid_run, "--top-fraction", "0"), "--top-fraction"),
    ("groundtruth", "big-fraction", gt(valid_run, "--top-fraction", "1.5"), "--top-fraction"),
    ("groundtruth", "unknown-space", gt(valid_run, "--all", "--space", "nosuch"), "unknown search space"),
    ("groundtruth", "unknown-precision", gt(valid_run, "--precision", "fp16"), "--precision"),
    ("groundtruth", "corrupt-run-json", gt(run_json("{not json")), "unreadable"),
    ("groundtruth", "run-json-missing-keys", gt(run_json('{"dataset": "digits"}')), "missing split_seed"),
    ("groundtruth", "truncated-results", gt(results(TRUNCATED)), "ends in the middle of a line"),
    ("groundtruth", "binary-results", gt(results(GARBAGE)), "not a readable nas-trials table"),
    ("groundtruth", "damaged-groundtruth", gt(results(WORDS, "groundtruth.csv")), "line 2: depth = 'one' is not"),
    ("groundtruth", "duplicated-groundtruth", gt(results(DUPLICATED, "groundtruth.csv")), "record the same unit"),
    ("groundtruth", "no-search-yet", gt(only_run_json), "no finished search"),
    ("groundtruth", "less-than-an-epoch", gt(valid_run, "--all", "--space", "micro", "--train-iterations", "5"),
     "less than one epoch"),
    ("groundtruth", "out-is-a-file", gt(a_file), "is a file"),
    # python -m reports nas
    ("report", "no-run-dir", lambda r: [str(r / "nothing")], "no NAS run directory"),
    ("report", "old-run-flag", lambda r: ["--run", str(valid_run(r))], "--run was removed: use the run folder as"),
    ("report", "zero-fraction", report(valid_run, "--top-fraction", "0"), "--top-fraction"),
    ("report", "no-results", report(only_run_json), "no search results"),
    ("report", "empty-results", report(results("")), "no search results"),  # 0 bytes: a failed write left no row
    ("report", "binary-results", report(results(GARBAGE)), "not a readable nas-trials table"),
    ("report", "truncated-results", report(results(TRUNCATED)), "ends in the middle of a line"),
    ("report", "duplicated-row", report(results(DUPLICATED)), "lines 2 and 3 record the same unit"),
    ("report", "conflicting-row", report(results(CONFLICTING)), "lines 2 and 3 record the same unit"),
    ("report", "legacy-results", report(results(LEGACY)), "older nas"),
    ("report", "percent-results", report(results(PERCENT)), "not a fraction"),
    ("report", "no-proxy-test-accuracy", report(results(NO_TEST)), "no proxy-trained test accuracy"),
    ("report", "words-in-results", report(results(WORDS)), "line 2: depth = 'one' is not"),
    ("report", "damaged-groundtruth", report(results(TRUNCATED, "groundtruth.csv")), "ends in the middle of a line"),
    ("report", "corrupt-run-json", report(run_json("{not json")), "unreadable"),
    ("report", "run-json-not-an-object", report(run_json('"run"')), "not a NAS run file"),
    ("report", "out-is-a-file", lambda r: [str(valid_run(r)), "--out", str(a_file(r / "x"))], "is a file"),
]


@pytest.mark.parametrize("command, make_argv, match", [pytest.param(c, a, m, id=f"{c}-{i}") for c, i, a, m in CASES])
def test_bad_input_is_one_error_line_and_touches_nothing(tmp_path, capsys, command, make_argv, match):
    argv = make_argv(tmp_path)
    before = snapshot(tmp_path)
    status, _, err = run_cli(MAINS[command], argv, capsys)
    assert_clean_refusal(status, err, before, snapshot(tmp_path), match)


def test_the_table_covers_every_command():
    counts = {c: sum(case[0] == c for case in CASES) for c in MAINS}
    assert min(counts.values()) >= 10 and sum(counts.values()) >= 20
