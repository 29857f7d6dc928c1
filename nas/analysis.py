"""From trial records to the paper's Table 5 numbers: rankings, top-5% Spearman, selected architecture, costs.

Pure functions over trial rows: a frame of the ``nas.results.TRIALS`` table (``read_trials``, ``TrialStore.frame``)
or a list of ``TrialRecord``; nothing here trains. As in the paper (docs/method.md section 7), a method RANKS
architectures by the validation accuracy of the models trained on its proxy, and the correlation is taken, over its
top 5%, between TEST accuracies: of those models trained on the proxy and of the same architectures trained on the
whole training split. Accuracies are fractions.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from dm_core import DMError

from .results import COLUMN_OF, TrialRecord, trials_frame

TOP_FRACTION = 0.05
GROUNDTRUTH_LABEL = "whole (ground truth)"

Trials = pd.DataFrame | Iterable[TrialRecord]  # trial rows, either way


def as_frame(records) -> pd.DataFrame:
    """Trial rows as a frame of the TRIALS columns (a frame is returned as it is)."""
    return records if isinstance(records, pd.DataFrame) else trials_frame(records)


def _groups(frame: pd.DataFrame, field: str):
    """``field``'s values (a TrialRecord field or a column) by architecture, architectures in first-seen order;
    missing values are left out."""
    column = COLUMN_OF.get(field, field)
    return frame.dropna(subset=[column]).groupby("arch", sort=False)[column]


def mean_scores(records: Trials, field: str = "val_acc") -> dict[str, float]:
    """Mean of ``field`` over repeats, per architecture."""
    return {arch: float(value) for arch, value in _groups(as_frame(records), field).mean().items()}


def std_scores(records: Trials, field: str) -> dict[str, float]:
    """Standard deviation (population, 0 for one repeat) of ``field`` over repeats, per architecture."""
    return {arch: float(value) for arch, value in _groups(as_frame(records), field).std(ddof=0).items()}


def rank(scores: Mapping[str, float]) -> list[str]:
    """Best first; ties broken by architecture name so that a ranking is reproducible."""
    return sorted(scores, key=lambda arch: (-scores[arch], arch))


def top_k_count(n: int, fraction: float = TOP_FRACTION) -> int:
    """ceil(fraction * n), at least 1; 5% of 720 is 36 (the epsilon keeps float error from adding one)."""
    return max(1, math.ceil(fraction * n - 1e-9))


def spearman(x: list[float], y: list[float]) -> float:
    """scipy's Spearman rho (average ranks for ties); NaN when undefined (fewer than 2 points, or constant)."""
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x, y).statistic)


@dataclass(frozen=True)
class TopKCorrelation:
    rho: float
    archs: list[str]  # the proxy's top k by validation accuracy, best first


def top_k_spearman(proxy_val: Mapping[str, float], proxy_test: Mapping[str, float],
                   truth_test: Mapping[str, float], fraction: float = TOP_FRACTION,
                   k: int | None = None) -> TopKCorrelation:
    """Rank by ``proxy_val``; over the top k, Spearman of ``proxy_test`` (trained on the proxy) vs ``truth_test``
    (trained on the whole split). k = ceil(fraction x number ranked) unless given. Every top-k architecture needs
    both test accuracies."""
    ranked = rank(proxy_val)
    top = ranked[:k if k is not None else top_k_count(len(ranked), fraction)]
    no_test = [a for a in top if a not in proxy_test]
    if no_test:
        raise DMError(f"{len(no_test)} of the top {len(top)} architectures have no proxy-trained test accuracy "
                      f"(e.g. {no_test[0]})")
    missing = [a for a in top if a not in truth_test]
    if missing:
        raise DMError(f"{len(missing)} of the top {len(top)} architectures have no ground truth yet "
                      f"(e.g. {missing[0]}): run python -m nas.groundtruth first")
    return TopKCorrelation(spearman([proxy_test[a] for a in top], [truth_test[a] for a in top]), top)


@dataclass(frozen=True)
class MethodSummary:
    """One column of Table 5. Accuracies are fractions; the reports print them in percent."""

    method: str
    budget: str
    precision: str
    architectures: int  # ranked by this method
    top_k: int
    spearman_top_k: float  # proxy-trained test vs whole-trained test over the top k by proxy validation
    spearman_all: float  # the same over every ranked architecture that has a ground truth
    with_truth: int  # how many ranked architectures have a ground truth (the points of spearman_all)
    selected: str  # the method's top-1 by proxy validation accuracy
    selected_proxy_val: float
    selected_proxy_test: float
    selected_whole_test: float  # whole-data test accuracy of the selected architecture (NaN: no ground truth)
    search_minutes: float  # training and validation time of every repeat of every architecture
    make_minutes: float  # time to condense / select the proxy set
    storage_images: int
    top: list[str]
    proxy_val: dict[str, float]
    proxy_test: dict[str, float]
    proxy_test_std: dict[str, float]


def summarize_method(method: str, budget: str, records: Trials, truth: Mapping[str, float],
                     storage_images: int, make_seconds: float, fraction: float = TOP_FRACTION) -> MethodSummary:
    records = as_frame(records)
    untested = records[records["test_acc_fraction"].isna()]
    if len(untested):
        first = untested.iloc[0]
        raise DMError(f"{len(untested)} {method} trials have no proxy-trained test accuracy (e.g. {first['arch']} "
                      f"repeat {first['repeat']}), which Table 5 correlates: rerun that search into a new out folder")
    val, test = mean_scores(records, "val_acc"), mean_scores(records, "test_acc")
    ranked = rank(val)
    k = top_k_count(len(ranked), fraction)
    top = ranked[:k]
    rho = top_k_spearman(val, test, truth, k=k).rho if all(a in truth for a in top) else math.nan
    common = [a for a in ranked if a in truth]
    rho_all = spearman([test[a] for a in common], [truth[a] for a in common])
    selected = ranked[0]
    precisions = sorted(records["precision"].unique())
    return MethodSummary(method, budget, "/".join(precisions), len(ranked), k, rho, rho_all, len(common), selected,
                         val[selected], test[selected], truth.get(selected, math.nan),
                         float(records["seconds"].sum()) / 60, make_seconds / 60, storage_images, top, val, test,
                         std_scores(records, "test_acc"))


def method_order(name: str) -> tuple[int, str]:
    """Table 5's column order: random, DSA, DM (and other sets), early stopping, whole, ground truth."""
    for i, prefix in enumerate(("random", "herding", "dsa", "dm", "early", "whole")):
        if name.startswith(prefix):
            return (i if name != GROUNDTRUTH_LABEL else 7, name)
    return (6, name)


def summarize_run(results: Trials, groundtruth: Trials, proxies: Mapping[str, dict],
                  fraction: float = TOP_FRACTION) -> list[MethodSummary]:
    """Every (proxy, budget) of the results, plus the ground truth's own column when it covers all ranked archs."""
    results, groundtruth = as_frame(results), as_frame(groundtruth)
    truth = mean_scores(groundtruth, "test_acc")
    groups = results.groupby(["proxy", "budget"], sort=False)
    budgets_of = results.groupby("proxy", sort=False)["budget"].nunique()
    summaries = []
    for (proxy, budget), records in groups:
        label = proxy if budgets_of[proxy] == 1 else f"{proxy} ({budget})"
        info = proxies.get(proxy, {})
        images = int(info.get("images", records["train_images"].iloc[0]))
        summaries.append(summarize_method(label, budget, records, truth, images, float(info.get("make_seconds", 0.0)),
                                          fraction))
    if len(groundtruth) and "whole" not in set(results["proxy"]) and set(results["arch"]) <= set(truth):
        # Ground truth trained every ranked architecture on the whole split: rank them by its validation accuracy.
        summaries.append(summarize_method(GROUNDTRUTH_LABEL, groundtruth["budget"].iloc[0], groundtruth, truth,
                                          int(groundtruth["train_images"].iloc[0]), 0.0, fraction))
    return sorted(summaries, key=lambda s: method_order(s.method))


def groundtruth_targets(results: Trials, fraction: float = TOP_FRACTION) -> list[str]:
    """The union, over every (proxy, budget) searched, of its top-``fraction`` architectures (in first-seen order)."""
    targets: dict[str, None] = {}
    for _, records in as_frame(results).groupby(["proxy", "budget"], sort=False):
        ranked = rank(mean_scores(records))
        targets.update(dict.fromkeys(ranked[:top_k_count(len(ranked), fraction)]))
    return list(targets)
