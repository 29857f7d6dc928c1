"""Run the README's quick start as a newcomer would, command by command, in a fresh folder, and print what each took
and what it reported (the table under the quick start in README.md).

    python benchmarks/quickstart.py [--workdir DIR] [--json-out FILE]

The commands are read from README.md (the first ``bash`` block after "## Quick start"), so the table always
measures the commands the README shows. Times: wall seconds, and CPU seconds (user + system of the command and
the processes it waited for, from ``getrusage``), which a shared, loaded machine inflates less than wall time; the
worker processes of ``--workers`` are the forkserver's children, not the command's, so their CPU is not counted.
A command that fails ends the run with its exit status and the tail of its stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands(readme: Path) -> list[str]:
    """The commands of the quick start's first bash block, continuation lines joined, comments dropped."""
    text = readme.read_text(encoding="utf-8")
    section = text[text.index("## Quick start"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        line = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not line and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return [c for c in commands if c]


def summary(command: str, last: dict) -> str:
    """The figures of a command's JSON line worth a glance."""
    if "mean_percent" in last:
        return f"accuracy {last['mean_percent']:.1f} +- {last.get('std_percent', 0):.1f} %"
    if "final_accuracy_percent" in last:
        return "final accuracy " + ", ".join(f"{m} {a:.1f} %" for m, a in last["final_accuracy_percent"].items())
    if "best_val_percent" in last:
        return f"best {last['best']} (validation {last['best_val_percent']:.1f} %)"
    if "best_test_percent" in last:
        return f"{last['architectures']} architectures, best test {last['best_test_percent']} %"
    if "file" in last and "seconds" in last:
        return f"set of {last.get('images', '?')} images"
    return "figures and tables written" if "out" in last else ", ".join(list(last)[:3])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, help="where the commands run (default: a new temp folder)")
    p.add_argument("--json-out", type=Path, help="also write the measurements here")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="quickstart-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(workdir / "home"), "PYTHONUNBUFFERED": "1"}
    env.pop("DM_DATA_ROOT", None)  # offline and from nothing: digits needs no data folder
    rows = []
    for command in quickstart_commands(ROOT / "README.md"):
        argv_ = shlex.split(command)
        if argv_[0] == "python":
            argv_[0] = sys.executable
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv_, cwd=workdir, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            print(f"FAILED ({done.returncode}): {command}\n{done.stderr[-2000:]}", file=sys.stderr)
            return done.returncode
        lines = done.stdout.strip().splitlines()
        try:
            last = json.loads(lines[-1]) if lines else {}
        except ValueError:
            last = {}
        rows.append({"command": command, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "result": last})
        print(f"{wall:7.1f} s wall {cpu:7.1f} s CPU  {command}", file=sys.stderr, flush=True)
    total_wall, total_cpu = sum(r["wall_s"] for r in rows), sum(r["cpu_s"] for r in rows)
    print(f"Measured by `python benchmarks/quickstart.py` on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end: {total_wall / 60:.1f} min wall, "
          f"{total_cpu / 60:.1f} CPU-min in all.\n")
    print("| command | wall s | CPU s | it reported |")
    print("|---|---|---|---|")
    for r in rows:
        short = r["command"].replace("python -m ", "")
        short = short if len(short) < 70 else short[:67] + "..."
        print(f"| `{short}` | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {summary(r['command'], r['result'])} |")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
