"""Bad input and faults, third round (issue 22), across every command: folder datasets, full disks and read-only
folders, seeds, devices, damaged or foreign files, silent acceptances, two identical commands at once.

Each refusal is checked the same way (tests/cli_harness.py): exit status 2, one ``error:`` line, no traceback, every
file that was there before byte-identical and nothing new. Where a fault can only come from the machine (a full disk,
an immutable folder), the test makes it: a small tmpfs, ``chattr +i``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_harness import assert_clean_refusal, run_cli, snapshot

from dm_core import DMError, load_dataset, make_set
from dm_core.cli import main as dm_main

ROOT = Path(__file__).resolve().parents[1]
TINY = "convnet-d1-w8"
DM = ["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "2", "--batch-real", "4",
      "--model", TINY, "--device", "cpu", "--no-progress"]
RANDOM = ["condense", "--dataset", "digits", "--method", "random", "--ipc", "1", "--no-progress"]


def continual_argv(out: Path, *extra: str) -> list[str]:
    return ["--dataset", "digits", "--steps", "2", "--memory", "random", "--ipc", "1", "--seeds", "0", "--repeats",
            "1", "--epochs", "1", "--model", TINY, "--max-train-per-class", "20", "--device", "cpu", "--no-progress",
            "--out", str(out), *extra]


def nas_argv(out: Path, *extra: str) -> list[str]:
    return ["--dataset", "digits", "--proxy", "random2", "--space", "micro", "--epochs", "1", "--repeats", "1",
            "--device", "cpu", "--no-progress", "--out", str(out), *extra]


def refused(main, argv, capsys, root: Path, match: str) -> None:
    before = snapshot(root)
    status, out, err = run_cli(main, argv, capsys)
    assert_clean_refusal(status, err, before, snapshot(root), match)
    assert out == ""


# --- folder datasets ---------------------------------------------------------------------------------------------

def image_folder(root: Path, mode: str = "L", sizes=((8, 8),) * 6, classes=("a", "b")) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i, size in enumerate(sizes if split == "train" else sizes[:2]):
                value = (40 * i + (0 if c == "a" else 120)) % 255
                Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(root / split / c /
                                                                                               f"{i}.png")
    return root


@pytest.mark.parametrize("fault, match", [
    ("not-an-image", "is not a readable image"), ("truncated", "is not a readable image"),
    ("mixed-sizes", "a folder dataset needs images of one size"), ("orphan-test-class", "lacks (c)"),
    ("one-class", "at least 2 classes")])
def test_a_broken_folder_dataset_is_one_error_line(tmp_path, capsys, fault, match):
    root = image_folder(tmp_path / "data", classes=("a",) if fault == "one-class" else ("a", "b"))
    if fault == "not-an-image":
        (root / "train" / "a" / "9.png").write_text("not a picture")
    elif fault == "truncated":
        data = (root / "train" / "b" / "0.png").read_bytes()
        (root / "train" / "b" / "0.png").write_bytes(data[:len(data) // 2])
    elif fault == "mixed-sizes":
        image_folder(root, sizes=((8, 8), (9, 9)))
    elif fault == "orphan-test-class":
        (root / "test" / "c").mkdir()
        shutil.copy(root / "test" / "a" / "0.png", root / "test" / "c" / "0.png")
    refused(dm_main, ["condense", "--dataset", f"folder:{root}", "--method", "random", "--ipc", "1", "--out",
                      str(tmp_path / "s.pt"), "--no-progress"], capsys, tmp_path, match)


def test_grey_folders_load_as_one_channel_and_colour_ones_as_three(tmp_path):
    grey = load_dataset(f"folder:{image_folder(tmp_path / 'grey')}")
    colour = load_dataset(f"folder:{image_folder(tmp_path / 'colour', mode='RGB')}")
    assert grey.channels == 1 and colour.channels == 3 and grey.num_classes == colour.num_classes == 2


@pytest.mark.parametrize("shape, match", [((12, 3, 3, 3), "could be N x C x H x W or N x H x W x C"),
                                          ((12, 8, 8), None)])
def test_an_ambiguous_npz_layout_is_refused(tmp_path, capsys, shape, match):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.integers(0, 255, shape, dtype=np.uint8), y_train=np.arange(12) % 3,
             x_test=rng.integers(0, 255, (6, *shape[1:]), dtype=np.uint8), y_test=np.arange(6) % 3)
    argv = ["condense", "--dataset", f"npz:{path}", "--method", "random", "--ipc", "1", "--out",
            str(tmp_path / "s.pt"), "--no-progress"]
    if match is None:
        assert run_cli(dm_main, argv, capsys)[0] == 0
    else:
        refused(dm_main, argv, capsys, tmp_path, match)


# --- seeds and devices: one rule, in every command and the API ---------------------------------------------------

BAD_SEEDS = ("-1", "1180591620717411303424", "1.5")
BAD_DEVICES = ("mps", "meta", "xpu", "cpu:3", "tpu", "cuda:x")


@pytest.mark.parametrize("seed", BAD_SEEDS)
def test_one_seed_rule_for_every_command(tmp_path, capsys, seed):
    from continual.run import main as continual_main
    from nas.search import main as search_main

    refused(dm_main, [*DM, "--seed", seed, "--out", str(tmp_path / "s.pt")], capsys, tmp_path, "seed")
    refused(continual_main, continual_argv(tmp_path / "cl", "--seeds", seed), capsys, tmp_path, "seed")
    refused(search_main, nas_argv(tmp_path / "nas", "--seed", seed), capsys, tmp_path, "seed")
    refused(search_main, nas_argv(tmp_path / "nas", "--split-seed", seed), capsys, tmp_path, "seed")


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_one_device_rule_for_every_command(tmp_path, capsys, device):
    from continual.run import main as continual_main
    from nas.groundtruth import main as groundtruth_main
    from nas.search import main as search_main

    match = f"unsupported device '{device}'"
    refused(dm_main, [*DM, "--device", device, "--out", str(tmp_path / "s.pt")], capsys, tmp_path, match)
    refused(continual_main, continual_argv(tmp_path / "cl", "--device", device), capsys, tmp_path, match)
    refused(search_main, nas_argv(tmp_path / "nas", "--device", device), capsys, tmp_path, match)
    refused(groundtruth_main, ["--out", str(tmp_path / "nas"), "--all", "--device", device], capsys, tmp_path,
            match)


def test_negative_threads_are_refused_before_they_are_applied(tmp_path, capsys):
    from continual.run import main as continual_main

    threads = torch.get_num_threads()
    refused(continual_main, continual_argv(tmp_path / "cl", "--threads", "-2"), capsys, tmp_path, "--threads")
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("arguments, match", [
    ({"ipc": 1.5}, "ipc must be an integer, got 1.5"), ({"ipc": "2"}, "ipc must be an integer, got '2'"),
    ({"seed": -7}, "seed must be an integer from 0 to 2\\*\\*63 - 1, got -7"),
    ({"device": "mps"}, "unsupported device 'mps'"), ({"iterations": 0}, "iterations must be at least 1")])
def test_the_python_api_raises_the_commands_message(digits, arguments, match):
    call = {"method": "dm", "data": digits, "ipc": 1, "iterations": 1, "device": "cpu", "progress": False,
            **arguments}
    with pytest.raises(DMError, match=match):
        make_set(**call)


def test_the_cli_gives_the_same_words(tmp_path, capsys):
    refused(dm_main, [*DM, "--seed", "-7", "--out", str(tmp_path / "s.pt")], capsys, tmp_path,
            "a seed is an integer from 0 to 2**63 - 1")


# --- files: damaged, foreign, or a picture that cannot be written ------------------------------------------------

def test_flipped_bytes_in_a_set_file_are_refused(tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert run_cli(dm_main, [*RANDOM, "--out", str(out)], capsys)[0] == 0
    synset = torch.load(out, weights_only=True)
    raw = bytearray(out.read_bytes())
    at = raw.find(synset["images"].numpy().tobytes()[:32])
    raw[at + 40] ^= 0x55  # a flipped byte inside the image tensor: torch.load reads it without a word
    out.write_bytes(bytes(raw))
    refused(dm_main, ["evaluate", str(out), "--epochs", "1", "--repeats", "1", "--model", TINY, "--device", "cpu",
                      "--no-progress"], capsys, tmp_path, "is damaged")


def test_a_set_evaluated_on_another_dataset_of_the_same_shape_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "other.npz", x_train=rng.integers(0, 255, (40, 16, 16), dtype=np.uint8),
             y_train=np.arange(40) % 10, x_test=rng.integers(0, 255, (20, 16, 16), dtype=np.uint8),
             y_test=np.arange(20) % 10)
    out = tmp_path / "s.pt"
    assert run_cli(dm_main, [*RANDOM, "--out", str(out)], capsys)[0] == 0
    refused(dm_main, ["evaluate", str(out), "--dataset", f"npz:{tmp_path / 'other.npz'}", "--epochs", "1",
                      "--repeats", "1", "--model", TINY, "--device", "cpu", "--no-progress"], capsys, tmp_path,
            "was made from digits")


def test_an_unwritable_picture_writes_neither_picture_nor_set(tmp_path, capsys):
    out = tmp_path / "s.pt"
    out.write_bytes(b"an earlier set")
    (tmp_path / "s.png").mkdir()  # the picture's path is a folder
    refused(dm_main, [*DM, "--png", "--out", str(out)], capsys, tmp_path, "is a folder")


# --- the machine's faults: a full disk, an immutable folder ------------------------------------------------------

def _can(command: list[str]) -> bool:
    return shutil.which(command[0]) is not None and subprocess.run(command, capture_output=True).returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    """A 96 KB tmpfs, mounted for the test and unmounted after it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if not _can(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)]):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def fill(mount: Path, leave: int) -> None:
    """Fill ``mount`` until about ``leave`` bytes are free."""
    stats = os.statvfs(mount)
    free = stats.f_bavail * stats.f_frsize
    (mount / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_a_full_disk_is_one_error_line_and_loses_nothing(full_disk, capsys):
    out = full_disk / "s.pt"
    out.write_bytes(b"an earlier set")
    fill(full_disk, 4096)  # the probe fits, the set does not
    refused(dm_main, [*RANDOM, "--out", str(out)], capsys, full_disk, "nothing was written")


def test_continual_on_a_disk_that_fills_up_keeps_its_rows_and_the_rerun_continues(full_disk, capsys):
    from continual.run import main as continual_main

    out = full_disk / "run"
    argv = continual_argv(out)
    assert run_cli(continual_main, argv[:-2] + ["--out", str(out)], capsys)[0] == 0
    rows = (out / "results.csv").read_bytes()
    (out / "results.csv").write_bytes(rows.split(b"\n", 2)[0] + b"\n" + rows.split(b"\n", 2)[1] + b"\n")  # 1 row
    fill(full_disk, 0)
    status, _, err = run_cli(continual_main, argv, capsys)
    assert status == 2 and "Traceback" not in err and len([x for x in err.splitlines() if "error:" in x]) == 1
    assert (out / "results.csv").read_bytes().count(b"\n") == 2  # the previous file, whole
    (full_disk / "filler").unlink()
    assert run_cli(continual_main, argv, capsys)[0] == 0
    assert (out / "results.csv").read_bytes().count(b"\n") == 3


@pytest.fixture
def immutable(tmp_path):
    """A folder that even root cannot write (``chattr +i``), made writable again after the test."""
    folder = tmp_path / "frozen"
    folder.mkdir()
    if not _can(["chattr", "+i", str(folder)]):
        pytest.skip("chattr +i is not available here")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=False)


def test_an_immutable_run_folder_is_refused_before_any_work(immutable, capsys, monkeypatch):
    import nas.plan
    from continual.run import main as continual_main
    from nas.groundtruth import main as groundtruth_main
    from nas.search import main as search_main

    monkeypatch.setattr(nas.plan, "prepare_task", lambda *a, **k: pytest.fail("the proxy was made first"))
    refused(search_main, nas_argv(immutable), capsys, immutable, "is not writable")
    refused(continual_main, continual_argv(immutable), capsys, immutable, "is not writable")
    refused(groundtruth_main, ["--out", str(immutable), "--all", "--space", "micro"], capsys, immutable,
            "is not writable")
    refused(dm_main, [*RANDOM, "--out", str(immutable / "s.pt")], capsys, immutable, "not writable")


def test_a_zero_byte_results_file_left_by_a_failed_write_does_not_block_the_rerun(tmp_path, capsys):
    from continual.run import main as continual_main

    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").write_bytes(b"")
    assert run_cli(continual_main, continual_argv(out), capsys)[0] == 0
    assert (out / "results.csv").read_text().count("\n") == 3  # header and two steps


# --- costs over a resume, and two identical commands at once -----------------------------------------------------

def test_a_resumed_sets_seconds_count_every_segment(digits, tmp_path, monkeypatch):
    import dm_core.dm as dm_module
    from dm_core import DMConfig, condense_dm

    config = DMConfig(ipc=1, iterations=10, batch_real=4, model=TINY, checkpoint_every=5)
    real, calls = dm_module.reinit_, {"n": 0}

    def slow_then_dying(net, generator):
        calls["n"] += 1
        time.sleep(0.05)
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(net, generator)

    monkeypatch.setattr(dm_module, "reinit_", slow_then_dying)
    with pytest.raises(KeyboardInterrupt):
        condense_dm(digits, config, device="cpu", checkpoint=tmp_path / "s.ckpt", progress=False)
    first = torch.load(tmp_path / "s.ckpt", weights_only=True)["seconds"]
    monkeypatch.setattr(dm_module, "reinit_", real)
    synset = condense_dm(digits, config, device="cpu", checkpoint=tmp_path / "s.ckpt", resume=True, progress=False)
    assert len(synset.meta["segments"]) == 2 and synset.meta["segments"][0] == first[0] >= 0.25
    assert synset.meta["seconds"] == pytest.approx(sum(synset.meta["segments"]), abs=0.01)


def _start(module: str, argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", module, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path_glob, folder: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not list(folder.glob(path_glob)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert list(folder.glob(path_glob)), "the first command never started its work"


@pytest.mark.slow
@pytest.mark.parametrize("module, argv, lock", [
    ("dm_core", [*DM[:8], "3000", *DM[9:], "--out", "s.pt"], ".s.pt.lock"),
    ("continual.run", continual_argv(Path("run"), "--epochs", "100000"), "run/.lock-*"),
    ("nas.search", nas_argv(Path("run"), "--epochs", "5000"), "run/.lock-*")])
def test_a_second_identical_command_is_refused_naming_the_first(tmp_path, module, argv, lock):
    first = _start(module, argv, tmp_path)
    try:
        _wait_for(lock, tmp_path, first)
        second = subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp_path, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert second.returncode == 2 and len(errors) == 1, second.stderr
        assert f"process {first.pid}" in errors[0] and "wait for it to finish" in errors[0]
    finally:
        first.kill()
        first.wait(60)
    # the lock went with the killed process: the same command now runs (checked by taking the lock)
    from dm_core.io import work_lock

    held = list(tmp_path.glob(lock))
    for path in held:
        with work_lock(path, "the test"):
            pass
