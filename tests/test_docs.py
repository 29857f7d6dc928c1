"""The docs cannot drift from the code: every name docs/dm_core_api.md lists is importable from the module its section
names, and the Python snippets of README.md and docs/architecture.md run as written (offline, on the CPU)."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def head_of(bullet: str) -> str:
    """A bullet's text up to its first ': ' outside backticks (where its description starts)."""
    inside = False
    for i, char in enumerate(bullet):
        if char == "`":
            inside = not inside
        elif char == ":" and not inside and bullet[i + 1:i + 2] == " ":
            return bullet[:i]
    return bullet


def api_names() -> list[tuple[str, str]]:
    """(module, name) for every name a bullet of docs/dm_core_api.md lists before its description."""
    found, module = [], None
    text = (ROOT / "docs" / "dm_core_api.md").read_text()
    for block in re.split(r"\n(?=- |## )", text):
        heading = re.match(r"## .*\(`([\w.]+)`\)", block)
        if heading:
            module = heading.group(1)
        elif block.startswith("- ") and module is not None:
            for span in re.findall(r"`([^`]*)`", head_of(block.replace("\n", " "))):
                name = re.match(r"[A-Za-z_][\w.]*", span)
                if name:
                    found.append((module, name.group(0)))
    return found


def test_the_api_page_lists_names_and_each_is_importable_where_it_says():
    names = api_names()
    assert len(names) > 60 and ("dm_core", "make_set") in names and ("dm_core.augment", "apply_runs") in names
    missing = []
    for module, name in names:
        target = importlib.import_module(module)
        for part in name.split("."):
            if not hasattr(target, part):
                missing.append(f"{module}.{name}")
                break
            target = getattr(target, part)
    assert not missing, f"listed on docs/dm_core_api.md but not importable there: {missing}"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def expected_lines(blocks: list[str]) -> list[str]:
    """What the snippets say they print: the comment after each ``print(...)``, e.g. ``print(x)  # 3``."""
    return [m.group(1).strip() for block in blocks for m in re.finditer(r"^\s*print\(.*\)\s+#\s*(.+)$", block,
                                                                       flags=re.M)]


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md"])
def test_the_python_snippets_run_as_written(doc, tmp_path):
    """Each doc's ```python blocks, in order, as one script run by a fresh interpreter in a temp folder (as a user
    pastes them); each ``print`` whose line ends in a comment must print what the comment says."""
    blocks = python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no Python snippet"
    script = tmp_path / "snippets.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "DM_DATA_ROOT": os.environ.get("DM_DATA_ROOT", str(ROOT.parent / "shared" / "data"))}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line.strip() for line in done.stdout.splitlines()]
    for expected in expected_lines(blocks):
        assert any(line.startswith(expected) or expected in line for line in printed), \
            f"{doc}: expected {expected!r} in the output {printed}"
