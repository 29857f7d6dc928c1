"""nas/ as NNI users meet it (issue 21, items 10 and 11): any strategy's export, one-shot included, is an architecture
of the multi-trial space; ``nas.evaluator`` is an NNI Evaluator that a NasExperiment of one's own takes as it is; and
every strategy, TPE included, maximises the validation accuracy that trials report.

Written the way a user writes them: their own model space, NNI strategy, experiment and export. Digits, CPU.
"""
from __future__ import annotations

import json
import logging

import pytest
import torch

import nas
from dm_core import ConvNetSpec, DMError
from nas import oneshot as oneshot_mod
from nas.results import read_records
from nas.search import main as search_main
from nas.space import NAMED_SPACES, ConvNetModelSpace, canonical_sample, spec_from_sample
from nas.strategies import OPTIMIZE_MODE, parse_strategy

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = NAMED_SPACES["tiny"]  # depth (1, 2), width 32 only, act (sigmoid, relu), 3 norms, 2 pools
BUDGET = "e1-b250-aug-color_crop_cutout_scale_rotate-r2"  # 1 epoch, the digits' strategy, the recipe's version


# --- item 10: one sample format for both spaces ----------------------------------------------------------------------

@pytest.mark.parametrize("sample", [
    {"depth": 2, "width": 32, "act": "relu", "norm": "instancenorm", "pool": "maxpool"},  # multi-trial
    {"depth": [1], "width": "32", "act": "relu", "norm": "instancenorm", "pool": "maxpool"},  # one-shot export
    {"depth": [1], "act": "relu", "norm": "instancenorm", "pool": "maxpool"},  # width: one value, left out
    {"depth": "2", "width": "32", "act": "relu", "norm": "instancenorm", "pool": "maxpool", "__arch__": True},
])

def test_any_sample_format_freezes_into_the_multi_trial_space(sample):
    expected = ConvNetSpec(2, 32, "relu", "instancenorm", "maxpool")
    assert spec_from_sample(sample, TINY) == expected
    assert canonical_sample(sample, TINY) == {"depth": 2, "width": 32, "act": "relu", "norm": "instancenorm",
                                              "pool": "maxpool"}
    frozen = ConvNetModelSpace(TINY, 1, 10, (8, 8)).freeze(sample)  # was: "[1] not found in [1, 2]"
    assert frozen.spec == expected and frozen(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("sample, message", [
    ({"depth": [2], "act": "relu", "norm": "none", "pool": "maxpool"}, "is not one index of the space's depths"),
    ({"depth": 3, "act": "relu", "norm": "none", "pool": "maxpool"}, "depth 3 is not in the space"),
    ({"depth": 1, "norm": "none", "pool": "maxpool"}, "has no act"),
    ({"depth": 1, "width": "64", "act": "relu", "norm": "none", "pool": "maxpool"}, "width 64 is not in the space"),
    ({"depth": True, "act": "relu", "norm": "none", "pool": "maxpool"}, "depth True is not in the space"),
])
def test_a_sample_of_no_architecture_of_the_space_is_one_error(sample, message):
    with pytest.raises(DMError, match=message):
        spec_from_sample(sample, TINY)


def test_indices_need_the_space_that_made_them():
    with pytest.raises(DMError, match="pass that space"):
        spec_from_sample({"depth": [0], "width": 32, "act": "relu", "norm": "none", "pool": "maxpool"})
    assert spec_from_sample({"depth": 4, "width": 256, "act": "relu", "norm": "none", "pool": "none"}).depth == 4


def test_a_one_shot_experiments_export_is_an_architecture_of_the_multi_trial_space(tmp_path, digits, caplog):
    """A user's own one-shot experiment on the supernet (NNI's DARTS, NNI's Lightning evaluator), its top model
    exported as NNI exports it, and frozen into the multi-trial space: the same architecture either way."""
    import nni
    from nni.nas.evaluator.pytorch import Classification
    from nni.nas.experiment import NasExperiment
    from nni.nas.strategy import DARTS
    from torch.utils.data import DataLoader, TensorDataset

    caplog.set_level(logging.ERROR, logger="nni")  # NNI's notes on the default config it infers
    torch.manual_seed(0)
    supernet = oneshot_mod.ConvNetSupernet(TINY, 1, 10, (16, 16))
    loader = nni.trace(DataLoader)
    data = TensorDataset(digits.x_train[:200], digits.y_train[:200])
    evaluator = Classification(train_dataloaders=loader(data, batch_size=100),
                               val_dataloaders=loader(data, batch_size=100), max_epochs=1, num_classes=10,
                               accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                               enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0)
    experiment = NasExperiment(supernet, evaluator, DARTS())
    try:
        experiment.run()
        exported = experiment.export_top_models(formatter="dict")[0]
    finally:
        experiment.stop()
    assert isinstance(exported["depth"], list)  # an InputChoice's indices: what the multi-trial space refused
    spec = supernet.spec(exported)
    assert ConvNetModelSpace(TINY, 1, 10, (16, 16)).freeze(exported).spec == spec_from_sample(exported, TINY) == spec
    assert spec in TINY.specs()


# --- item 11: an NNI Evaluator for a NasExperiment of one's own ------------------------------------------------------

def test_a_users_experiment_takes_nas_evaluator_as_it_is(tmp_path, caplog):
    from nni.nas.evaluator import Evaluator
    from nni.nas.experiment import NasExperiment, NasExperimentConfig
    from nni.nas.strategy import Random

    caplog.set_level(logging.ERROR, logger="nni")
    out = tmp_path / "mine"
    space = ConvNetModelSpace(NAMED_SPACES["micro"], channels=1, num_classes=10, image_size=(16, 16))  # digits
    evaluator = nas.evaluator(dataset="digits", proxy="random5", epochs=1, repeats=2, device="cpu", out=str(out))
    assert isinstance(evaluator, Evaluator)
    config = NasExperimentConfig("sequential", "simplified")
    config.max_trial_number = 3
    experiment = NasExperiment(space, evaluator, Random(seed=0), config)
    try:
        experiment.run()
        top = experiment.export_top_models(formatter="dict")[0]  # NNI sorts its models by metric, highest first
    finally:
        experiment.stop()

    rows = read_records(out / "results.csv")  # recorded as nas.search records: reports and reruns read them
    assert len(rows) == 3 * 2 and {r.repeat for r in rows} == {0, 1} and len({r.arch for r in rows}) == 3
    assert all(r.proxy == "random5" and r.budget == BUDGET and r.test_acc is not None for r in rows)
    mean = {arch: sum(r.val_acc for r in rows if r.arch == arch) / 2 for arch in {r.arch for r in rows}}
    assert spec_from_sample(top, space.space).name == max(mean, key=mean.get)
    info = json.loads((out / "run.json").read_text())
    assert info["dataset"] == "digits" and info["proxies"]["random5"]["images"] == 50


def test_the_evaluator_refuses_the_experiments_settings_and_bad_values_before_any_work(tmp_path):
    with pytest.raises(DMError, match="strategy: not an evaluator's"):
        nas.evaluator(dataset="digits", strategy="tpe", out=str(tmp_path / "a"))
    with pytest.raises(DMError, match="repeats must be at least 1"):
        nas.evaluator(dataset="digits", repeats=0, out=str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_every_strategy_maximises_tpe_included():
    assert OPTIMIZE_MODE == "maximize"
    for name in ("tpe", "TPE"):
        assert parse_strategy(name).build(4, seed=0).tuner.optimize_mode.value == "maximize"


def minimising_tpe():
    """A user's strategy built the NNI way, TPE() minimising by default."""
    from nni.nas.strategy import TPE

    return TPE()


def test_a_users_strategy_that_minimises_is_refused(tmp_path, capsys):
    argv = ["--dataset", "digits", "--space", "micro", "--proxy", "random2", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "run"), "--strategy", f"{__name__}:minimising_tpe"]
    assert search_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "minimises, but trials report validation accuracy" in err[0], err
    assert not (tmp_path / "run").exists()
