"""NAS repeats and the ground truth train through dm_core.train_many (issue 23): the records do not depend on how
many train at once, and a trial's curves are what the epoch-by-epoch path measures."""
import pytest
import torch

from dm_core import ConvNetSpec, TrainConfig, evaluate_accuracy, train_model
from dm_core.many import build_network
from nas.assessor import CurveStore
from nas.results import TrialStore
from nas.trial import ArchitectureEvaluator, TrainTask, train_architecture, trial_job

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
SPECS = [ConvNetSpec(1, 8, "relu", "instancenorm", "avgpool"), ConvNetSpec(2, 8, "sigmoid", "none", "maxpool")]


@pytest.fixture(scope="module")
def task(digits):
    g = torch.Generator().manual_seed(0)
    train = torch.randperm(len(digits.y_train), generator=g)
    pick, val = train[:60], train[60:260]
    config = TrainConfig(epochs=3, batch_size=16, augment="none")
    return TrainTask("proxy", digits.x_train[pick], digits.y_train[pick], config, digits.x_train[val],
                     digits.y_train[val], digits.num_classes, digits.x_test[:200], digits.y_test[:200])


def scores(store: TrialStore, task: TrainTask) -> dict:
    return {(spec.name, r.repeat): (r.val_acc, r.test_acc)
            for spec in SPECS for r in store.done(task.label, spec.name, task.budget).values()}


def test_the_ground_truth_is_the_same_with_one_worker_and_with_two(task, tmp_path):
    stores = {}
    for workers in (1, 2):
        store = TrialStore(tmp_path / f"groundtruth{workers}.csv")
        heard = []
        ArchitectureEvaluator(task, store, 2, 5, "cpu", workers=workers,
                              on_repeat=lambda r, reused, heard=heard: heard.append((r.arch, reused))).run_all(SPECS)
        assert sorted(heard) == sorted((s.name, False) for s in SPECS for _ in range(2))
        stores[workers] = scores(store, task)
    assert len(stores[1]) == 4 and stores[1] == stores[2]
    # and what the one-at-a-time function gives for one of them
    alone = train_architecture(SPECS[1], task, 1, 5, "cpu")
    assert (alone.val_acc, alone.test_acc) == stores[2][(SPECS[1].name, 1)]
    # a rerun trains nothing and reports every repeat as reused
    heard = []
    ArchitectureEvaluator(task, TrialStore(tmp_path / "groundtruth2.csv"), 2, 5, "cpu",
                          on_repeat=lambda r, reused: heard.append(reused), workers=2).run_all(SPECS)
    assert heard == [True] * 4


def test_repeats_with_intermediate_results_record_the_curves_the_epoch_path_measures(task, tmp_path, monkeypatch):
    reported = []
    monkeypatch.setattr("nas.trial.nni.report_intermediate_result", reported.append)
    curves = CurveStore(tmp_path / "curves.csv")
    evaluator = ArchitectureEvaluator(task, TrialStore(tmp_path / "results.csv"), 3, 0, "cpu", report_every=2,
                                      curves=curves, workers=2)
    result = evaluator.run(SPECS[0])
    assert [r.repeat for r in result.records] == [0, 1, 2]
    # every repeat's curve: after pass 2 and the last pass (4: epochs 0..3), as an epoch-by-epoch watch measures it
    job = trial_job(SPECS[0], task, 2, 0)
    watched = []

    def on_epoch(epoch, net):
        if epoch % 2 == 0 or epoch == task.passes:
            watched.append(evaluate_accuracy(net, task.x_val, task.y_val, "cpu"))

    train_model(build_network(job, CPU), task.x, task.y, task.config, job.seed, "cpu", on_epoch=on_epoch)
    heard = []
    train_architecture(SPECS[0], task, 2, 0, "cpu", every=2, on_point=lambda epoch, acc: heard.append((epoch, acc)))
    assert heard == [(2, watched[0]), (4, watched[1])]
    mine = [c for c in curves.curves() if c.repeat == 2]
    assert len(mine) == 1 and list(mine[0].val_acc) == watched and len(watched) == 2
    assert result.records[2].val_acc == watched[-1]  # the last point is the final validation accuracy
    assert len(curves.curves()) == 3
    assert len(reported) == 3 * len(watched) and reported[-len(watched):] == watched
