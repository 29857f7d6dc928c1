"""Ctrl-C in continual.run (a real SIGINT to a subprocess), or a cancelled job (SIGTERM): one closing line, exit
status 130 (143), and the same command continues where it stopped without changing what was recorded."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest
from test_continual_processes import ROOT, command, environment, rows_of


@pytest.mark.parametrize("signum,status,words", [(signal.SIGINT, 130, "interrupted: "),
                                                 (signal.SIGTERM, 143, "stopped by SIGTERM: ")])
def test_ctrl_c_ends_with_one_line_and_the_same_command_continues(tmp_path, signum, status, words):
    out = tmp_path / "run"
    argv = command(out, [0], memory="dm", epochs=30, repeats=2)
    p = subprocess.Popen(argv, cwd=ROOT, env=environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 400
    while time.time() < deadline and p.poll() is None:
        if (out / "results.csv").is_file() and len(rows_of(out / "results.csv")) >= 1:
            break
        time.sleep(0.2)
    assert p.poll() is None, "the run finished before it could be interrupted"
    p.send_signal(signum)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == status
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    # one closing line; before it, at most dm_core's notice that a condensation stops after its iteration
    assert lines[-1].startswith(words) and "rerun the same command" in lines[-1]
    assert all(line.startswith("stopping after this iteration") for line in lines[:-1]) and len(lines) <= 2
    kept = rows_of(out / "results.csv")
    assert 1 <= len(kept) < 4

    done = subprocess.run(argv, cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr
    rows = rows_of(out / "results.csv")
    assert rows[:len(kept)] == kept  # nothing recorded before the interrupt changed
    assert sorted((r["seed"], r["repeat"], r["step"]) for r in rows) == sorted(
        (str(s), str(r), str(t)) for s in (0,) for r in (0, 1) for t in (0, 1))
