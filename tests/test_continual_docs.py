"""docs/continual.md's quick-start examples, executed from the doc itself (so the doc cannot drift from the code)."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "continual.md"


def quick_start_blocks() -> list[str]:
    """The first two ```python blocks of the doc: the ReplayPlugin example and the GDumb-style one."""
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[:2]


def test_the_quick_start_is_short_and_comes_first():
    replay, gdumb = quick_start_blocks()
    assert len(replay.splitlines()) <= 25
    assert "ReplayPlugin(" in replay and "CondensedMemory(\"dm\"" in replay and "nc_benchmark(" in replay
    assert "GDumbMemoryPlugin(" in gdumb
    text = DOC.read_text()
    assert text.index("```python") < text.index("## `CondensedMemory(")


def test_both_quick_start_examples_run_offline_on_the_digits():
    replay, gdumb = quick_start_blocks()
    torch.set_num_threads(1)
    printed = io.StringIO()
    namespace: dict = {"__name__": "__doc_example__"}
    with contextlib.redirect_stdout(printed):
        exec(compile(replay, f"{DOC}:replay", "exec"), namespace)
        exec(compile(gdumb, f"{DOC}:gdumb", "exec"), namespace)
    lines = re.findall(r"^(replay|GDumb-style), after experience (\d): ([\d.]+)%$", printed.getvalue(), flags=re.M)
    assert [(kind, int(t)) for kind, t, _ in lines] == [(k, t) for k in ("replay", "GDumb-style") for t in range(5)]
    accuracy = {(kind, int(t)): float(a) for kind, t, a in lines}
    assert all(0.0 <= a <= 100.0 for a in accuracy.values())
    # two classes, then ten: far above chance (50%, then 10%); GDumb-style on 10 DM images per class keeps most
    assert accuracy[("replay", 0)] > 90 and accuracy[("GDumb-style", 0)] > 90
    assert accuracy[("replay", 4)] > 40 and accuracy[("GDumb-style", 4)] > 70
    memory = namespace["memory"]
    assert memory.method == "dm" and len(memory.buffer) == 100 and memory.max_size == 100


@pytest.mark.slow
def test_the_checkpoint_example_runs_after_the_quick_start(tmp_path, monkeypatch):
    """The third ```python block (checkpoint and resume a user's strategy) runs as written, with the quick start's
    names, and resumes after two experiences."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    replay, checkpoint = blocks[0], blocks[2]
    assert "save_checkpoint(" in checkpoint and "load_checkpoint(" in checkpoint
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # the example writes replay.ckpt where it runs
    printed = io.StringIO()
    namespace: dict = {"__name__": "__doc_example__"}
    with contextlib.redirect_stdout(printed):
        exec(compile(replay, f"{DOC}:replay", "exec"), namespace)
        exec(compile(checkpoint, f"{DOC}:checkpoint", "exec"), namespace)
    (line,) = re.findall(r"^resumed after (\d) experiences: ([\d.]+)%$", printed.getvalue(), flags=re.M)
    assert line[0] == "2" and float(line[1]) > 40 and (tmp_path / "replay.ckpt").is_file()
