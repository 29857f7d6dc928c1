"""A run directory: what its searches share (dataset and validation split) and what each proxy cost to make.

Layout::

    run.json          dataset, split seed, validation fraction; per proxy: images, seconds to make, file, provenance
    results.csv       one row per (proxy, architecture, budget, trial seed)   -- nas.search (``nas.results.TRIALS``)
    groundtruth.csv   the same, proxy "groundtruth"                          -- nas.groundtruth
    curves.csv        learning curves and early stops                        -- ``nas.assessor.CURVES``
    oneshot.csv       one-shot selections                                    -- ``nas.oneshot.ONESHOT``
    proxies/*.pt      cached proxy sets (dm_core synthetic-set files)

Several searches may write one directory at the same time: ``run.json`` is read, changed and written back under an
exclusive ``flock`` (``run.json.lock``), and the tables are ``dm_core.records`` tables, appended under the same kind
of lock, so no entry is lost. ``claim`` only checks (it writes nothing), so a command refused for bad input leaves a
new directory empty.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path

from dm_core import DMError, atomic_write_text
from dm_core.io import file_lock
from dm_core.records import Table

from .assessor import CURVES
from .results import TRIALS

RESULTS = "results.csv"
GROUNDTRUTH = "groundtruth.csv"
PROXIES = "proxies"
RUN_INFO = "run.json"
CLAIM_KEYS = ("dataset", "split_seed", "val_fraction")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def groundtruth(self) -> Path:
        return self.path / GROUNDTRUTH

    @property
    def proxies(self) -> Path:
        return self.path / PROXIES

    @property
    def info_file(self) -> Path:
        return self.path / RUN_INFO

    def check_folder(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise DMError(f"{self.path} is a file, not a run directory: choose another out folder")

    def info(self) -> dict:
        """run.json ({} when there is none); DMError if it is damaged or not a NAS run file."""
        self.check_folder()
        file = self.info_file
        if not file.exists():
            return {}
        try:
            info = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise DMError(f"{file} is unreadable ({type(exc).__name__}): restore it or use another out folder") \
                from None
        problem = _info_problem(info)
        if problem:
            raise DMError(f"{file} is not a NAS run file ({problem}): restore it or use another out folder")
        return info

    def check_results(self) -> None:
        """Read the trial and curve tables once, so a damaged one stops a command before it does any work."""
        for path, schema in ((self.results, TRIALS), (self.groundtruth, TRIALS), (self.path / "curves.csv", CURVES)):
            Table(path, schema).read()

    def claim(self, dataset: str, split_seed: int, val_fraction: float) -> dict:
        """Check that this directory is free or holds a search on the same dataset and split; write nothing.

        Returns the claim (dataset, split seed, validation fraction) that ``record_proxy`` writes with its entry.
        """
        mine = {"dataset": dataset, "split_seed": split_seed, "val_fraction": val_fraction}
        _check_claim(self.path, self.info(), mine)
        self.check_results()
        return mine

    def record_proxy(self, name: str, entry: dict, claim: dict | None = None) -> None:
        """Add (or replace) one proxy's entry: read-modify-write under the lock, so concurrent searches lose nothing."""
        self.check_folder()
        with file_lock(self.path / (RUN_INFO + ".lock")):
            info = self.info()
            if claim is not None:
                _check_claim(self.path, info, claim)
                info = {**claim, "proxies": {}, **info}
            elif not info:
                raise DMError(f"{self.path} has no run.json: claim the directory first")
            info["proxies"] = {**info["proxies"], name: entry}
            atomic_write_text(self.info_file, json.dumps(info, indent=2, sort_keys=True) + "\n")


def _check_claim(path: Path, info: dict, mine: dict) -> None:
    theirs = {k: info.get(k) for k in mine}
    if info and theirs != mine:
        raise DMError(f"{path} holds a search on {theirs}, not {mine}: use another out folder")


def _info_problem(info) -> str | None:
    if not isinstance(info, dict):
        return f"a JSON {type(info).__name__}, not an object"
    missing = [k for k in (*CLAIM_KEYS, "proxies") if k not in info]
    if missing:
        return f"missing {', '.join(missing)}"
    if not isinstance(info["dataset"], str) or not isinstance(info["split_seed"], int) \
            or not isinstance(info["val_fraction"], numbers.Real) or not isinstance(info["proxies"], dict):
        return "dataset, split_seed, val_fraction or proxies has the wrong type"
    if not all(isinstance(v, dict) for v in info["proxies"].values()):
        return "a proxy entry is not an object"
    return None
