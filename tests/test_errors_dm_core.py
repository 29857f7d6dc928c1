"""Bad input to ``python -m dm_core``: one ``error:`` line, exit 2, no traceback, no file written or lost.

Each case builds its inputs in a temp folder, snapshots the folder, runs the command in-process and checks the
refusal and that every pre-existing file is byte-identical afterwards. Interruptions (Ctrl-C) run as subprocesses.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_harness import assert_clean_refusal, run_cli, snapshot

from dm_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
DM = ["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "2", "--batch-real", "4",
      "--model", "convnet-d1-w8", "--device", "cpu", "--no-progress"]
RANDOM = ["condense", "--dataset", "digits", "--method", "random", "--ipc", "1", "--no-progress"]
HERDING = ["condense", "--dataset", "digits", "--method", "herding", "--ipc", "1", "--option", "epochs=1",
           "--model", "convnet-d1-w8", "--device", "cpu", "--no-progress"]


def then(_done, value):
    """``value``, once the side effect that produced ``_done`` has happened (keeps the case table one line each)."""
    return value


def with_model(model: str) -> list[str]:
    return [model if a == "convnet-d1-w8" else a for a in DM]


def npz(tmp: Path, **change) -> str:
    """A valid little npz dataset (3 classes, 8x8 grey), with some arrays replaced."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (12, 8, 8), dtype=np.uint8), "y_train": np.arange(12) % 3,
              "x_test": rng.integers(0, 255, (6, 8, 8), dtype=np.uint8), "y_test": np.arange(6) % 3}
    arrays.update(change)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp / "data.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def npz_condense(tmp: Path, **change) -> list[str]:
    return ["condense", "--dataset", npz(tmp, **change), "--method", "random", "--ipc", "1", "--out",
            str(tmp / "set.pt"), "--no-progress"]


def a_set(tmp: Path, **payload) -> str:
    """A set file in the dm_core format with parts replaced (None removes a part)."""
    base = {"format": "dm_core.synthetic_set/1", "images": torch.zeros(2, 1, 16, 16), "labels": torch.tensor([0, 1]),
            "meta": {"dataset": "digits", "method": "random", "ipc": 1}}
    base.update(payload)
    path = tmp / "given.pt"
    torch.save({k: v for k, v in base.items() if v is not None}, path)
    return str(path)


def evaluate_args(path: str) -> list[str]:
    return ["evaluate", path, "--epochs", "1", "--repeats", "1", "--model", "convnet-d1-w8", "--device", "cpu",
            "--no-progress"]


CASES = {
    # paths that would lose a file or could not be written
    "out is a folder": (lambda t: (t / "dir").mkdir() or DM + ["--out", str(t / "dir")], "folder"),
    "out under a file": (lambda t: then((t / "f").write_text("x"), DM) + ["--out", str(t / "f" / "s.pt")],
                         "not a folder"),
    "out in an unwritable place": (lambda t: DM + ["--out", "/proc/dm_toolkit_test/s.pt"], "cannot write"),
    "out named .ckpt": (lambda t: DM + ["--out", str(t / "s.ckpt")], ".ckpt"),
    "png over the set": (lambda t: DM + ["--out", str(t / "s.png"), "--png"], "picture over the set"),
    "checkpoint is out": (lambda t: DM + ["--out", str(t / "s.pt"), "--checkpoint", str(t / "s.pt")], "--out file"),
    "checkpoint is a folder": (lambda t: (t / "ck").mkdir() or DM + ["--out", str(t / "s.pt"), "--checkpoint",
                                                                     str(t / "ck")], "folder"),
    "checkpoint with random": (lambda t: RANDOM + ["--out", str(t / "s.pt"), "--checkpoint", str(t / "c.ckpt")],
                               "keeps no checkpoint"),
    "checkpoint with herding": (lambda t: HERDING + ["--out", str(t / "s.pt"), "--checkpoint", str(t / "c.ckpt")],
                                "keeps no checkpoint"),
    "restart with herding": (lambda t: HERDING + ["--out", str(t / "s.pt"), "--restart"], "keeps no checkpoint"),
    "resume flag removed": (lambda t: DM + ["--out", str(t / "s.pt"), "--resume", "--restart"],
                            "--resume was removed"),
    "quiet flag renamed": (lambda t: DM + ["--out", str(t / "s.pt"), "--quiet"], "use --no-progress"),
    # option values
    "lr-img negative": (lambda t: DM + ["--out", str(t / "s.pt"), "--lr-img", "-1"], "--lr-img must be positive"),
    "lr-img zero": (lambda t: DM + ["--out", str(t / "s.pt"), "--lr-img", "0"], "--lr-img must be positive"),
    "lr-img nan": (lambda t: DM + ["--out", str(t / "s.pt"), "--lr-img", "nan"], "--lr-img must be a finite"),
    "dsa lr-img zero": (lambda t: ["condense", "--dataset", "digits", "--method", "dsa", "--ipc", "1", "--lr-img",
                                   "0", "--out", str(t / "s.pt"), "--no-progress"], "--lr-img must be positive"),
    "iterations for random": (lambda t: RANDOM + ["--out", str(t / "s.pt"), "--iterations", "5"], "applies to dm"),
    "class-chunk for random": (lambda t: RANDOM + ["--out", str(t / "s.pt"), "--class-chunk", "2"], "applies to dm"),
    "model for random": (lambda t: RANDOM + ["--out", str(t / "s.pt"), "--model", "convnet"], "not random"),
    "herding-epochs flag removed": (lambda t: DM + ["--out", str(t / "s.pt"), "--herding-epochs", "2"],
                                    "--option epochs=N"),
    "herding option for dm": (lambda t: DM + ["--out", str(t / "s.pt"), "--option", "epochs=2"], "unknown option"),
    "option log_every zero": (lambda t: DM + ["--out", str(t / "s.pt"), "--option", "log_every=0"], "log_every"),
    "option checkpoint_every zero": (lambda t: DM + ["--out", str(t / "s.pt"), "--option", "checkpoint_every=0"],
                                     "checkpoint_every"),
    "option of the wrong type": (lambda t: DM + ["--out", str(t / "s.pt"), "--option", "init=3"],
                                 "must be a string"),
    "option seed": (lambda t: DM + ["--out", str(t / "s.pt"), "--option", "seed=3"], "use --seed"),
    "option unknown": (lambda t: DM + ["--out", str(t / "s.pt"), "--option", "bogus=1"], "unknown option"),
    "option twice": (lambda t: DM + ["--out", str(t / "s.pt"), "--option", "iterations=3"], "give it once"),
    "bf16 for random": (lambda t: RANDOM + ["--out", str(t / "s.pt"), "--precision", "bf16"], "precision"),
    "compile for random": (lambda t: RANDOM + ["--out", str(t / "s.pt"), "--compile", "off"], "--compile applies"),
    "compile for idm": (lambda t: [a if a != "dm" else "idm" for a in DM] + ["--out", str(t / "s.pt"), "--compile",
                                                                            "on"], "--compile applies"),
    "dsa compile misspelt": (lambda t: [a if a != "dm" else "dsa" for a in DM] + ["--out", str(t / "s.pt"),
                                                                                 "--option", "compile=yes"],
                             "compile mode"),
    "compile flag and option": (lambda t: DM + ["--out", str(t / "s.pt"), "--compile", "off", "--option",
                                                "compile=on"], "give it once"),
    "compile option misspelt": (lambda t: DM + ["--out", str(t / "s.pt"), "--option", "compile=yes"],
                                "compile mode"),
    "herding compile misspelt": (lambda t: HERDING + ["--out", str(t / "s.pt"), "--option", "compile=yes"],
                                 "compile mode"),
    "batchnorm chunked": (lambda t: with_model("convnetbn-w8") + ["--class-chunk", "1", "--out", str(t / "s.pt")],
                          "BatchNorm"),
    "unknown model": (lambda t: with_model("resnet50") + ["--out", str(t / "s.pt")], "unknown model"),
    "unknown dataset": (lambda t: ["condense", "--dataset", "imagenet21k", "--method", "random", "--ipc", "1",
                                   "--out", str(t / "s.pt")], "unknown dataset"),
    "unknown method": (lambda t: ["condense", "--dataset", "digits", "--method", "kmeans", "--ipc", "1",
                                  "--out", str(t / "s.pt")], "unknown method 'kmeans'"),
    # npz datasets
    "npz missing": (lambda t: ["condense", "--dataset", f"npz:{t / 'none.npz'}", "--method", "random", "--ipc", "1",
                               "--out", str(t / "s.pt")], "no array file"),
    "npz garbage": (lambda t: then((t / "g.npz").write_bytes(b"not a zip"), []) + [
        "condense", "--dataset", f"npz:{t / 'g.npz'}", "--method", "random", "--ipc", "1", "--out", str(t / "s.pt")],
        "not a readable"),
    "npz lacks y_test": (lambda t: npz_condense(t, y_test=None), "lacks"),
    "npz x/y length mismatch": (lambda t: npz_condense(t, y_train=np.arange(11) % 3), "12 images"),
    "npz y_test length mismatch": (lambda t: npz_condense(t, y_test=np.arange(4) % 3), "6 images"),
    "npz negative labels": (lambda t: npz_condense(t, y_train=np.arange(12) % 3 - 1), "negative"),
    "npz 2-D labels": (lambda t: npz_condense(t, y_train=(np.arange(12) % 3).reshape(12, 1)), "1-D"),
    "npz string labels": (lambda t: npz_condense(t, y_train=np.array(list("abc" * 4))), "integer"),
    "npz float labels": (lambda t: npz_condense(t, y_train=np.arange(12) % 3 + 0.5), "integer"),
    "npz empty labels": (lambda t: npz_condense(t, x_test=np.zeros((0, 8, 8), np.uint8),
                                                y_test=np.zeros(0, np.int64)), "empty"),
    "npz float images": (lambda t: npz_condense(t, x_train=np.zeros((12, 8, 8), np.float32)), "uint8"),
    "npz 5-channel images": (lambda t: npz_condense(t, x_train=np.zeros((12, 16, 16, 5), np.uint8),
                                                    x_test=np.zeros((6, 16, 16, 5), np.uint8)), "channels"),
    "npz a class without images": (lambda t: npz_condense(t, y_train=np.arange(12) % 3 * 2,
                                                          y_test=np.arange(6) % 3), "no training images"),
    "npz class names miscounted": (lambda t: npz_condense(t, class_names=np.array(["a", "b"])), "class names"),
    # set files given to evaluate
    "set lacks images": (lambda t: evaluate_args(a_set(t, images=None)), "images"),
    "set meta not a dict": (lambda t: evaluate_args(a_set(t, meta=[1, 2])), "not a dict"),
    "set with NaN pixels": (lambda t: evaluate_args(a_set(t, images=torch.full((2, 1, 16, 16), float("nan")))),
                            "non-finite"),
    "set with float labels": (lambda t: evaluate_args(a_set(t, labels=torch.tensor([0.0, 1.0]))), "labels"),
    "set labels beyond classes": (lambda t: evaluate_args(a_set(t, labels=torch.tensor([0, 12]))), "beyond"),
    "set of another shape": (lambda t: evaluate_args(a_set(t, images=torch.zeros(2, 3, 32, 32))), "holds"),
    "set file garbage": (lambda t: then((t / "g.pt").write_bytes(b"garbage"), []) + evaluate_args(str(t / "g.pt")),
                         "not a readable"),
    "set file missing": (lambda t: evaluate_args(str(t / "none.pt")), "no synthetic-set file"),
    "evaluate zero epochs": (lambda t: evaluate_args(a_set(t))[:2] + ["--epochs", "0"], "at least 1"),
    "evaluate bad grouping": (lambda t: evaluate_args(a_set(t)) + ["--augment-groups", "class"], "invalid choice"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_cleanly(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make, match = CASES[name]
    argv = make(tmp_path)
    (tmp_path / "keep.txt").write_text("existing")
    before = snapshot(tmp_path)
    status, out, err = run_cli(main, argv, capsys)
    assert_clean_refusal(status, err, before, snapshot(tmp_path), match)
    assert out == ""


def interrupted_checkpoint(digits, tmp_path, monkeypatch, iterations=10):
    """A DM checkpoint at iteration 5 of ``iterations``, left by a run that died in iteration 8."""
    import dm_core.dm as dm_module
    from dm_core import DMConfig, condense_dm

    real_reinit, calls = dm_module.reinit_, {"n": 0}

    def dying(net, generator):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real_reinit(net, generator)

    monkeypatch.setattr(dm_module, "reinit_", dying)
    config = DMConfig(ipc=1, iterations=iterations, batch_real=4, model="convnet-d1-w8", checkpoint_every=5)
    with pytest.raises(KeyboardInterrupt):
        condense_dm(digits, config, device="cpu", checkpoint=tmp_path / "s.ckpt", progress=False)
    monkeypatch.setattr(dm_module, "reinit_", real_reinit)
    return tmp_path / "s.ckpt"


def test_resume_with_fewer_iterations_than_the_checkpoint_is_refused(digits, tmp_path, capsys, monkeypatch):
    interrupted_checkpoint(digits, tmp_path, monkeypatch)
    argv = ["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "3", "--batch-real",
            "4", "--model", "convnet-d1-w8", "--device", "cpu", "--out", str(tmp_path / "s.pt"), "--no-progress"]
    before = snapshot(tmp_path)
    status, _, err = run_cli(main, argv, capsys)
    assert_clean_refusal(status, err, before, snapshot(tmp_path), "iteration 5, beyond iterations 3")


def test_a_checkpoint_of_other_settings_names_the_setting(digits, tmp_path, capsys, monkeypatch):
    interrupted_checkpoint(digits, tmp_path, monkeypatch)
    argv = ["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "10", "--batch-real",
            "4", "--model", "convnet-d1-w8", "--lr-img", "2", "--device", "cpu", "--out", str(tmp_path / "s.pt"),
            "--no-progress"]
    before = snapshot(tmp_path)
    status, _, err = run_cli(main, argv, capsys)
    assert_clean_refusal(status, err, before, snapshot(tmp_path), "--lr-img 1.0 -> 2.0")


def test_the_same_command_resumes_a_checkpoint(digits, tmp_path, capsys, monkeypatch):
    """No --resume needed: a matching checkpoint is continued; --restart starts over."""
    ckpt = interrupted_checkpoint(digits, tmp_path, monkeypatch)
    argv = ["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "10", "--batch-real",
            "4", "--model", "convnet-d1-w8", "--device", "cpu", "--no-progress"]
    assert run_cli(main, argv + ["--out", str(tmp_path / "s.pt")], capsys)[0] == 0
    assert not ckpt.exists()
    assert run_cli(main, argv + ["--out", str(tmp_path / "straight.pt")], capsys)[0] == 0
    resumed = torch.load(tmp_path / "s.pt", weights_only=True)
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    assert torch.equal(resumed["images"], straight["images"])


def test_atomic_writes_never_touch_the_umask(tmp_path, monkeypatch):
    from dm_core import atomic_write_text

    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0o022)
    path = atomic_write_text(tmp_path / "a.txt", "x")
    assert calls == [] and path.read_text() == "x"
    assert path.stat().st_mode & 0o777 == 0o666 & ~0o022


# --- Ctrl-C ----------------------------------------------------------------------------------------------------------

def run_and_interrupt(argv: list[str], cwd: Path, after: str = "it/s", signum: int = signal.SIGINT,
                      written: Path | None = None) -> subprocess.CompletedProcess:
    """Start ``python -m dm_core ARGV``, send ``signum`` once its stderr matches the regular expression ``after``
    (and the file ``written`` exists), wait for the end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dm_core", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    seen = bytearray()
    ready = threading.Event()

    def read():
        while chunk := proc.stderr.read1(256):
            seen.extend(chunk)
            if re.search(after.encode(), seen):
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(120), "the command never showed progress"
    deadline = time.time() + 120
    while written is not None and not written.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    out = proc.stdout.read()
    proc.wait(120)
    reader.join(10)
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), seen.decode(errors="replace"))


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_the_same_command_continues_bit_identically(tmp_path):
    argv = ["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "1500",
            "--batch-real", "4", "--model", "convnet-d1-w8", "--device", "cpu", "--out", "s.pt"]
    stopped = run_and_interrupt(argv, tmp_path, after=r"\| *[1-9]\d*/1500 ")  # an iteration done: a checkpoint
    assert stopped.returncode == 130, stopped.stderr
    # tqdm's monitor thread may redraw the bar after the message, so look for the message line, not the last line
    lines = [line for line in stopped.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert any(line.startswith("interrupted: at iteration") and "rerun the same command" in line for line in lines), \
        stopped.stderr
    assert "Traceback" not in stopped.stderr and (tmp_path / "s.ckpt").is_file() and not (tmp_path / "s.pt").exists()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    resumed = subprocess.run([sys.executable, "-m", "dm_core", *argv, "--no-progress"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run([sys.executable, "-m", "dm_core", *argv[:-1], "straight.pt", "--no-progress"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    a = torch.load(tmp_path / "s.pt", weights_only=True)
    b = torch.load(tmp_path / "straight.pt", weights_only=True)
    assert torch.equal(a["images"], b["images"]) and a["meta"]["iterations"] == 1500
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["images"] == 10


@pytest.mark.slow
def test_ctrl_c_in_evaluate_says_nothing_was_saved(tmp_path):
    setfile = tmp_path / "r.pt"
    subprocess.run([sys.executable, "-m", "dm_core", "condense", "--dataset", "digits", "--method", "random",
                    "--ipc", "1", "--out", str(setfile), "--no-progress"], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=300)
    before = snapshot(tmp_path)
    stopped = run_and_interrupt(["evaluate", str(setfile), "--epochs", "100000", "--repeats", "1", "--model",
                                 "convnet-d1-w8", "--device", "cpu"], tmp_path, after="evaluate")
    time.sleep(0)
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr
    lines = [line for line in stopped.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted") and "nothing was saved" in lines[-1]
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_sigterm_ends_with_one_line_and_keeps_the_checkpoint(tmp_path):
    """A cancelled job (SIGTERM, as scancel or kill send) says so in one ``stopped by SIGTERM:`` line, writes no
    set, and the periodic checkpoint continues the run."""
    argv = ["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "3000",
            "--batch-real", "4", "--model", "convnet-d1-w8", "--device", "cpu", "--option", "checkpoint_every=10",
            "--out", "s.pt"]
    stopped = run_and_interrupt(argv, tmp_path, signum=signal.SIGTERM, written=tmp_path / "s.ckpt")
    assert stopped.returncode == 143, stopped.stderr
    lines = stopped.stderr.replace("\r", "\n").splitlines()
    errors = [line for line in lines if line.startswith(("error:", "stopped by SIGTERM:"))]
    assert len(errors) == 1 and errors[0].startswith("stopped by SIGTERM:") and "s.ckpt" in errors[0], stopped.stderr
    assert "Traceback" not in stopped.stderr and (tmp_path / "s.ckpt").is_file() and not (tmp_path / "s.pt").exists()
