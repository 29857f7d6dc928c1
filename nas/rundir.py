"""A run directory: what its searches share (dataset and validation split) and what each proxy cost to make.

Layout::

    run.json          dataset, split seed, validation fraction; per proxy: images, seconds to make, file
    results.csv       one row per (proxy, architecture, budget, repeat)   -- nas.search
    groundtruth.csv   one row per (architecture, budget, repeat)          -- nas.groundtruth
    proxies/*.pt      cached proxy sets (dm_core synthetic-set files)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dm_core import DMError, atomic_write_text

RESULTS = "results.csv"
GROUNDTRUTH = "groundtruth.csv"
PROXIES = "proxies"
RUN_INFO = "run.json"


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

    def info(self) -> dict:
        file = self.path / RUN_INFO
        if not file.is_file():
            return {}
        try:
            return json.loads(file.read_text())
        except (json.JSONDecodeError, OSError) as exc:
            raise DMError(f"{file} is unreadable ({exc}): delete it or use another --out") from None

    def write_info(self, info: dict) -> None:
        atomic_write_text(self.path / RUN_INFO, json.dumps(info, indent=2, sort_keys=True) + "\n")

    def claim(self, dataset: str, split_seed: int, val_fraction: float) -> dict:
        """Record the dataset and split of this directory, or refuse a search on another one."""
        info = self.info()
        mine = {"dataset": dataset, "split_seed": split_seed, "val_fraction": val_fraction}
        theirs = {k: info.get(k) for k in mine}
        if info and theirs != mine:
            raise DMError(f"{self.path} holds a search on {theirs}, not {mine}: use another --out")
        if not info:
            info = {**mine, "proxies": {}}
            self.write_info(info)
        return info

    def record_proxy(self, name: str, entry: dict) -> None:
        info = self.info()
        info.setdefault("proxies", {})[name] = entry
        self.write_info(info)
