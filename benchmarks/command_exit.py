"""What ``dm_core.shell.exit_process`` saves per command: the same command ended by Python's own exit
(``sys.exit(main())``, the entry before it) and by ``exit_process`` (``python -m dm_core``), interleaved.

    python benchmarks/command_exit.py --repeats 6

The command: ``condense --dataset digits --method random --ipc 1`` (offline, about 2-3 s, most of it importing
torch), whole processes timed from start to exit; medians of ``--repeats``, and the median of per-repeat ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm_core import atomic_write_text  # noqa: E402


def seconds(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="command_exit_")) / "set.pt"
    command = ["condense", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", str(out),
               "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    ways = {"sys.exit(main())": [sys.executable, "-c", "import sys; from dm_core.cli import main; sys.exit(main())",
                                 *command],
            "exit_process (python -m dm_core)": [sys.executable, "-m", "dm_core", *command]}
    times = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            times[name].append(seconds(way, env))
    old, new = times.values()
    result = {"seconds": times, "median_seconds": {n: statistics.median(t) for n, t in times.items()},
              "speedup": statistics.median(a / b for a, b in zip(old, new)), "load": os.getloadavg()[0]}
    for name, median in result["median_seconds"].items():
        print(f"{name:34s} {median:.2f} s per command (median of {args.repeats})")
    print(f"speed-up {result['speedup']:.2f}x; load {result['load']:.1f}")
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
