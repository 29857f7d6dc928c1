"""nas/: the 720-ConvNet space, the in-process NNI search, resume, ground truth, Spearman, CLI errors.

Searches run on scikit-learn's digits (offline) with tiny budgets; every test runs on CPU in seconds.
"""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
from scipy import stats

from dm_core import DMError, SyntheticSet, build_model, load_dataset
from nas import live as live_mod
from nas import trial as trial_mod
from nas.analysis import groundtruth_targets, mean_scores, rank, top_k_count, top_k_spearman
from nas.groundtruth import GroundTruthConfig, run_groundtruth
from nas.groundtruth import main as groundtruth_main
from nas.proxy import parse_proxy, proxy_file
from nas.results import read_records
from nas.search import SearchConfig, run_search
from nas.search import main as search_main
from nas.space import NAMED_SPACES, ConvNetModelSpace, parse_space, spec_from_sample

pytestmark = pytest.mark.usefixtures("one_thread")


DIGITS = "-aug-color_crop_cutout_scale_rotate"  # the digits' strategy (no flip) in a budget
RECIPE = "-r2"  # the trainer's recipe version in a budget


def tiny_search(out, **overrides) -> SearchConfig:
    fields = dict(dataset="digits", space="micro", proxy="random5", epochs=2, repeats=2, device="cpu", out=str(out),
                  progress=False)
    return SearchConfig(**{**fields, **overrides})


# --- the space -------------------------------------------------------------------------------------------------------

def test_full_space_is_720_distinct_architectures():
    space = NAMED_SPACES["full"]
    specs = space.specs()
    assert len(space) == len(specs) == 720
    assert len({s.name for s in specs}) == 720
    assert {s.depth for s in specs} == {1, 2, 3, 4} and {s.width for s in specs} == {32, 64, 128, 256}
    assert {s.act for s in specs} == {"sigmoid", "relu", "leakyrelu"}
    assert {s.norm for s in specs} == {"none", "batchnorm", "layernorm", "instancenorm", "groupnorm"}
    assert {s.pool for s in specs} == {"none", "maxpool", "avgpool"}
    assert len(NAMED_SPACES["tiny"]) >= 24
    assert set(NAMED_SPACES["tiny"].specs()) <= set(specs)


@pytest.mark.parametrize("channels, size", [(3, (32, 32)), (1, (28, 28))])
def test_every_architecture_builds_and_runs_forward(channels, size):
    x = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(0))
    space = NAMED_SPACES["full"]
    with torch.no_grad():
        for spec in space.specs():
            model = build_model(spec, channels, 10, size).eval()
            out = model(x)
            assert out.shape == (2, 10), spec.name
            assert torch.isfinite(out).all(), spec.name


def test_nni_model_space_matches_the_enumeration():
    space = NAMED_SPACES["full"]
    model_space = ConvNetModelSpace(space, 3, 10, (32, 32))
    choices = {label: tuple(m.values) for label, m in model_space.simplify().items()}
    assert choices == space.choices()
    sample = {"depth": 4, "width": 64, "act": "leakyrelu", "norm": "groupnorm", "pool": "maxpool"}
    frozen = model_space.freeze(sample)
    assert frozen.spec == spec_from_sample(sample)
    assert frozen(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_frozen_model_survives_nni_serialisation():
    """What ``local`` execution ships to a trial process: the frozen model space and the evaluator's settings."""
    import nni
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.space import SimplifiedModelSpace

    space = ConvNetModelSpace(NAMED_SPACES["micro"], 1, 10, (28, 28))
    evaluator = FunctionalEvaluator(live_mod.evaluate_in_trial_process, settings={"proxy": "dm10", "out": "r"})
    sample = {"depth": 2, "width": 32, "act": "relu", "norm": "instancenorm", "pool": "avgpool"}
    shipped = nni.load(nni.dump(SimplifiedModelSpace.from_model(space, evaluator).freeze(sample)))
    assert shipped.sample == sample and shipped.executable_model().spec == spec_from_sample(sample)
    assert shipped.evaluator.function is live_mod.evaluate_in_trial_process
    assert shipped.evaluator.arguments == {"settings": {"proxy": "dm10", "out": "r"}}


def test_parse_space_reads_named_and_explicit_spaces():
    assert parse_space("tiny") is NAMED_SPACES["tiny"]
    space = parse_space("depth=1,2;width=32;act=relu;norm=none,batchnorm;pool=avgpool")
    assert len(space) == 4 and [s.name for s in space.specs()][0] == "convnet-d1-w32-relu-none-avgpool"
    assert len(parse_space("depth=1")) == 180
    for bad in ("depth=", "nosuch", "depth=5", "colour=red", "width=abc"):
        with pytest.raises(DMError):
            parse_space(bad)


def test_parse_proxy_names_and_early_budget():
    assert parse_proxy("dm50").name == "dm50" and parse_proxy("random50").is_set
    assert parse_proxy("DSA10").name == "dsa10"
    early = parse_proxy("early")
    # the paper: 500-image proxy, batch 250, 200 epochs = 400 steps on the whole training set
    assert early.early_iterations(num_classes=10, epochs=200, batch_size=250) == 400
    assert parse_proxy("whole").default_epochs() == 100 and parse_proxy("dm50").default_epochs() == 200
    for bad in ("dm", "dm0", "best50", "whole10", ""):
        with pytest.raises(DMError):
            parse_proxy(bad)


# --- the search ------------------------------------------------------------------------------------------------------

def test_search_runs_in_process_and_records_every_trial(tmp_path):
    summary = run_search(tiny_search(tmp_path / "run"))
    records = read_records(tmp_path / "run" / "results.csv")
    micro = NAMED_SPACES["micro"]
    assert len(records) == len(micro) * 2
    assert {(r.arch, r.repeat) for r in records} == {(s.name, k) for s in micro.specs() for k in (0, 1)}
    assert all(r.proxy == "random5" and r.budget == "e2-b250" + DIGITS + RECIPE and r.train_images == 50
               for r in records)
    # every proxy trial records the test accuracy of the proxy-trained model (Table 5 correlates it) and precision
    assert all(0 <= r.val_acc <= 1 and 0 <= r.test_acc <= 1 and r.precision == "fp32" for r in records)
    assert summary.trials == len(micro)
    assert [a for a, _ in summary.ranking] == rank(mean_scores(records))
    assert (tmp_path / "run" / "proxies" / "digits-random5-split0-seed0.pt").is_file()
    assert not (Path(os.environ["HOME"]) / "nni-experiments").exists()  # in-process: no NNI manager, no files


def test_precision_and_compile_flags_reach_every_trial(tmp_path, monkeypatch, capsys):
    """``--precision bf16`` trains and evaluates every trial in bf16 under its own budget; ``--compile`` is the mode
    of every trial's training."""
    import dm_core.train

    seen = []
    monkeypatch.setattr(dm_core.train, "compile_pays", lambda net, x, config, *a, **k:
                        seen.append((config.precision, config.compile)) or False)
    argv = ["--dataset", "digits", "--space", "micro", "--proxy", "random5", "--epochs", "1", "--repeats", "1",
            "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress", "--precision", "bf16",
            "--compile", "off"]
    assert search_main(argv) == 0
    records = read_records(tmp_path / "run" / "results.csv")
    assert len(records) == len(NAMED_SPACES["micro"])
    assert all(r.precision == "bf16" and r.budget == "e1-b250-bf16" + DIGITS + RECIPE for r in records)
    assert seen == [("bf16", "off")] * len(records)


def one_by_one(seen: list, stop_after: int | None = None):
    """A ``train_many`` that trains its jobs one call at a time, noting each job in ``seen`` (and raising
    KeyboardInterrupt, as Ctrl-C would, instead of the job after ``stop_after``)."""
    from dm_core.many import train_many as real

    def train_many(jobs, *args, on_result=None, **kwargs):
        results = []
        for i, job in enumerate(jobs):
            if stop_after is not None and len(seen) == stop_after:
                raise KeyboardInterrupt
            seen.append(job)
            results += real([job], *args, on_result=None if on_result is None else
                            (lambda _, result, i=i: on_result(i, result)), **kwargs)
        return results

    return train_many


def test_search_resumes_without_redoing_finished_trials(tmp_path, monkeypatch):
    reference = read_records(run_search(tiny_search(tmp_path / "fresh")).results)

    calls = []
    monkeypatch.setattr(trial_mod, "train_many", one_by_one(calls, stop_after=3))  # the 4th training is killed
    with pytest.raises(KeyboardInterrupt):
        run_search(tiny_search(tmp_path / "run"))
    assert len(read_records(tmp_path / "run" / "results.csv")) == 3

    calls.clear()
    monkeypatch.setattr(trial_mod, "train_many", one_by_one(calls))
    run_search(tiny_search(tmp_path / "run"))
    assert len(calls) == len(reference) - 3
    resumed = read_records(tmp_path / "run" / "results.csv")
    strip = lambda rs: sorted((r.arch, r.repeat, r.val_acc) for r in rs)  # noqa: E731
    assert strip(resumed) == strip(reference)  # seeded trials: resuming changes nothing

    calls.clear()
    run_search(tiny_search(tmp_path / "run"))
    assert calls == []  # a finished search trains nothing


def test_another_seed_trains_its_own_trials_and_shares_the_common_ones(tmp_path, monkeypatch):
    """Repeat r of a search with --seed s is the training with seed s + r: a search with another seed into the same
    run directory reuses only the trainings with the same seed, never a row trained from another seed."""
    jobs = []
    monkeypatch.setattr(trial_mod, "train_many", one_by_one(jobs))
    run_search(tiny_search(tmp_path / "run", space="depth=1;width=32;act=relu;norm=none;pool=avgpool"))
    assert [job.seed for job in jobs] == [0, 1]
    jobs.clear()
    summary = run_search(tiny_search(tmp_path / "run", space="depth=1;width=32;act=relu;norm=none;pool=avgpool",
                                     seed=1))
    assert [job.seed for job in jobs] == [2]  # trial seed 1 was trained by the first search; 2 is new
    records = read_records(tmp_path / "run" / "results.csv")
    assert sorted(r.seed for r in records) == [0, 1, 2]  # one row per training, none overwritten
    by_seed = {r.seed: r.val_acc for r in records}
    assert summary.best[1] == pytest.approx((by_seed[1] + by_seed[2]) / 2)  # the seed-1 search's own repeats


@pytest.mark.parametrize("strategy", ["random", "evolution", "tpe", "RegularizedEvolution", "GridSearch"])
def test_other_strategies_respect_the_trial_budget(tmp_path, strategy):
    summary = run_search(tiny_search(tmp_path / strategy, strategy=strategy, max_trials=3, repeats=1, epochs=1))
    records = read_records(summary.results)
    assert len(records) == 3 and len({r.arch for r in records}) == 3


def test_ground_truth_trains_the_union_of_top_architectures(tmp_path):
    out = tmp_path / "run"
    run_search(tiny_search(out))
    run_search(tiny_search(out, proxy="random10"))
    results = read_records(out / "results.csv")
    targets = groundtruth_targets(results, fraction=0.5)
    truth = run_groundtruth(GroundTruthConfig(out=str(out), top_fraction=0.5, epochs=1, repeats=1, device="cpu",
                                              progress=False))
    assert set(truth) == set(targets) and 2 <= len(targets) <= 4
    rows = read_records(out / "groundtruth.csv")
    assert all(r.proxy == "groundtruth" and r.test_acc is not None and r.train_images == 1293 for r in rows)
    # --all adds the rest and reuses what is there
    truth_all = run_groundtruth(GroundTruthConfig(out=str(out), all=True, space="micro", epochs=1, repeats=1,
                                                  device="cpu", progress=False))
    assert len(truth_all) == 4 and all(truth_all[a] == truth[a] for a in truth)


# --- analysis --------------------------------------------------------------------------------------------------------

def test_top_k_spearman_agrees_with_scipy():
    rng = random.Random(0)
    proxy = {f"a{i}": rng.random() for i in range(40)}
    truth = {a: 0.5 * v + 0.5 * rng.random() for a, v in proxy.items()}
    proxy_test = {a: v + 0.3 * rng.random() for a, v in proxy.items()}  # ranked by proxy, correlated by test
    result = top_k_spearman(proxy, proxy_test, truth, fraction=0.25)
    top = sorted(proxy, key=proxy.get, reverse=True)[:10]
    assert result.archs == top
    expected = stats.spearmanr([proxy_test[a] for a in top], [truth[a] for a in top]).statistic
    assert result.rho == pytest.approx(expected, abs=1e-12)
    assert top_k_count(720) == 36 and top_k_count(24, 0.25) == 6 and top_k_count(3) == 1


def test_top_k_spearman_known_rankings_and_ties():
    proxy = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.1}  # validation: ranks
    test = dict(proxy)  # proxy-trained test accuracy: correlated
    assert top_k_spearman(proxy, test, {"a": 4, "b": 3, "c": 2, "d": 1}, k=4).rho == pytest.approx(1.0)
    assert top_k_spearman(proxy, test, {"a": 1, "b": 2, "c": 3, "d": 4}, k=4).rho == pytest.approx(-1.0)
    tied = top_k_spearman(proxy, test, {"a": 2, "b": 2, "c": 1, "d": 0}, k=4).rho
    assert tied == pytest.approx(stats.spearmanr([4, 3, 2, 1], [2, 2, 1, 0]).statistic)
    # ties in the proxy's test accuracy: averaged in the correlation; ties in validation: broken by name
    proxy_ties = {"x": 0.5, "y": 0.5, "z": 0.4}
    result = top_k_spearman(proxy_ties, proxy_ties, {"x": 1.0, "y": 3.0, "z": 2.0}, k=3)
    assert result.archs == ["x", "y", "z"]
    assert result.rho == pytest.approx(stats.spearmanr([0.5, 0.5, 0.4], [1, 3, 2]).statistic)
    assert math.isnan(top_k_spearman(proxy, test, {"a": 1, "b": 1}, k=2).rho)  # constant truth: undefined
    with pytest.raises(DMError, match="ground truth"):
        top_k_spearman(proxy, test, {"a": 1}, k=2)
    with pytest.raises(DMError, match="no proxy-trained test accuracy"):
        top_k_spearman(proxy, {"a": 0.9}, {"a": 1, "b": 2}, k=2)


# --- CLI errors: one line on stderr, exit 2, nothing trained ---------------------------------------------------------

def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("argv, message", [
    (["--proxy", "bogus7"], "unknown proxy"),
    (["--space", "depth="], "empty"),
    (["--space", "nosuch"], "unknown search space"),
    (["--dataset", "npz:/nonexistent/data.npz"], "no array file"),
    (["--repeats", "0"], "repeats"),
])
def test_search_cli_bad_input(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert search_main(["--dataset", "digits", "--out", str(out), "--device", "cpu", *argv]) == 2
    assert message in _error_line(capsys)
    assert not (out / "results.csv").exists()


def test_search_cli_refuses_a_proxy_made_for_another_dataset(tmp_path, capsys):
    digits = load_dataset("digits")
    foreign = SyntheticSet(digits.x_train[:20], digits.y_train[:20], {"dataset": "mnist"})
    given = foreign.save(tmp_path / "foreign.pt")
    argv = ["--dataset", "digits", "--space", "micro", "--device", "cpu", "--no-progress"]
    assert search_main([*argv, "--out", str(tmp_path / "a"), "--proxy", "custom:foreign", "--proxy-file",
                        str(given)]) == 2
    assert "made for dataset 'mnist'" in _error_line(capsys)
    # the same in the cache of a run directory
    out = tmp_path / "b"
    foreign.save(proxy_file(out / "proxies", "digits", parse_proxy("random2"), 0, 0, {}))
    assert search_main([*argv, "--out", str(out), "--proxy", "random2"]) == 2
    assert "made for dataset 'mnist'" in _error_line(capsys)
    assert not (out / "results.csv").exists()


def test_search_cli_runs_and_groundtruth_cli_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert groundtruth_main(["--out", str(out), "--device", "cpu"]) == 2
    assert "not a NAS run directory" in _error_line(capsys)
    argv = ["--dataset", "digits", "--space", "micro", "--proxy", "random3", "--epochs", "1", "--repeats", "1",
            "--device", "cpu", "--out", str(out), "--no-progress"]
    assert search_main(argv) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (last["proxy"], last["architectures_ranked"]) == ("random3", 4)
    assert groundtruth_main(["--out", str(out), "--train-iterations", "0"]) == 2
    assert "--train-iterations" in _error_line(capsys)
    assert groundtruth_main(["--out", str(out), "--steps", "6"]) == 2  # the flag's old name
    assert "--steps was renamed: use --train-iterations" in _error_line(capsys)


def test_search_refuses_a_run_directory_of_another_dataset(tmp_path):
    out = tmp_path / "run"
    run_search(tiny_search(out, epochs=1, repeats=1))
    with pytest.raises(DMError, match="holds a search on"):
        run_search(tiny_search(out, split_seed=1))


def test_local_execution_config_is_built_without_starting_a_server(tmp_path, monkeypatch):
    """``--execution local`` goes through NasExperiment; its run() is stubbed here so that no port is opened."""
    from nni.nas.experiment import NasExperiment

    seen = {}

    def fake_run(self, port=8080, wait_completion=True, debug=False):
        seen.update(port=port, engine=self.config.execution_engine.name, concurrency=self.config.trial_concurrency,
                    workdir=str(self.config.experiment_working_directory), trials=self.config.max_trial_number,
                    settings=self.evaluator.arguments["settings"])
        return True

    monkeypatch.setattr(NasExperiment, "run", fake_run)
    monkeypatch.setattr(NasExperiment, "stop", lambda self: None)
    summary = run_search(tiny_search(tmp_path / "run", execution="local", concurrency=2, port=18080))
    settings = seen.pop("settings")
    assert seen == {"port": 18080, "engine": "ts", "concurrency": 2, "trials": 4,
                    "workdir": str((tmp_path / "run" / "nni").resolve())}
    assert SearchConfig(**settings).resolve().proxy.name == "random5"  # what a trial process rebuilds its task from
    assert summary.trials == 0  # nothing ran


def test_remote_execution_takes_its_machines_from_a_training_service_file(tmp_path, monkeypatch):
    """``--execution remote --training-service FILE`` configures NNI's remote service (run() stubbed: no server)."""
    import json

    from nni.nas.experiment import NasExperiment

    key = tmp_path / "id_test"
    key.write_text("not a real key")
    service = tmp_path / "machines.json"
    service.write_text(json.dumps({"machine_list": [{"host": "gpu-box-1", "user": "me", "ssh_key_file": str(key)}]}))
    seen = {}

    def fake_run(self, port=8080, wait_completion=True, debug=False):
        ts = self.config.training_service
        seen.update(platform=ts.platform, hosts=[(m.host, m.port, m.user) for m in ts.machine_list], port=port)
        return True

    monkeypatch.setattr(NasExperiment, "run", fake_run)
    monkeypatch.setattr(NasExperiment, "stop", lambda self: None)
    run_search(tiny_search(tmp_path / "run", execution="remote", training_service=str(service), port=18081))
    assert seen == {"platform": "remote", "hosts": [("gpu-box-1", 22, "me")], "port": 18081}


@pytest.mark.parametrize("overrides, message", [
    (dict(execution="remote"), "needs training_service"),
    (dict(execution="kubeflow"), "needs training_service"),
    (dict(execution="sequential", training_service="x.json"), "goes with execution"),
    (dict(execution="remote", training_service="/nonexistent.json"), "cannot read the training-service file"),
])
def test_training_service_errors_come_before_any_work(tmp_path, overrides, message):
    with pytest.raises(DMError, match=message):
        tiny_search(tmp_path / "run", **overrides).resolve()
    assert not (tmp_path / "run").exists()


def test_a_training_service_file_nni_rejects_is_one_clear_error(tmp_path):
    from nas.live import build_experiment
    from nas.space import ConvNetModelSpace

    service = tmp_path / "bad.json"
    service.write_text('{"machine_list": [{"host": "h", "user": "u", "no_such_field": 1}]}')
    plan = tiny_search(tmp_path / "run", execution="remote", training_service=str(service)).resolve()
    space = ConvNetModelSpace(plan.space, 1, 10, (16, 16))
    with pytest.raises(DMError, match="not valid for NNI's remote training service"):
        build_experiment(plan, space, strategy=None)


def augments(jobs: list) -> list[str]:
    return [job.config.augment for job in jobs]


# --- one command shell: the JSON line, --augment ---------------------------------------------------------------------

def test_both_commands_end_with_one_json_line_and_augment_reaches_every_training(tmp_path, monkeypatch, capsys):
    """--augment is the DSA strategy of every training (search trials and ground truth), recorded in each row and
    in the budget (a row trained otherwise never stands in); the last stdout line is the command's JSON object."""
    jobs = []
    monkeypatch.setattr(trial_mod, "train_many", one_by_one(jobs))
    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--space", "micro", "--proxy", "random3", "--epochs", "1", "--repeats", "1",
            "--device", "cpu", "--out", str(out), "--no-progress"]
    assert search_main([*argv, "--augment", "none"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) == {"proxy", "strategy", "optimize_mode", "repeats", "architectures_ranked", "stopped_early",
                         "best", "best_val_percent", "selected_by", "budget", "augment", "results"}
    assert (last["augment"], last["budget"], last["optimize_mode"], last["stopped_early"]) == \
        ("none", "e1-b250-aug-none" + RECIPE, "maximize", 0)
    assert last["best"] in {s.name for s in NAMED_SPACES["micro"].specs()} and 0 <= last["best_val_percent"] <= 100
    assert last["results"] == str(out / "results.csv") and augments(jobs) == ["none"] * 4
    assert search_main(argv) == 0  # the dataset's strategy: trained again, under its own budget
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["budget"] == "e1-b250" + DIGITS + RECIPE
    rows = read_records(out / "results.csv")
    full = ("color_crop_cutout_scale_rotate", "e1-b250" + DIGITS + RECIPE)
    assert sorted((r.augment, r.budget) for r in rows) == [full] * 4 + [("none", "e1-b250-aug-none" + RECIPE)] * 4
    assert augments(jobs)[4:] == ["color_crop_cutout_scale_rotate"] * 4

    jobs.clear()
    assert groundtruth_main(["--out", str(out), "--top-fraction", "0.25", "--train-iterations", "6", "--repeats",
                             "1", "--augment", "crop_flip", "--device", "cpu", "--no-progress"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) == {"groundtruth", "architectures", "best", "best_test_percent", "budget", "augment", "repeats"}
    assert (last["budget"], last["augment"], last["repeats"]) == ("it6-b250-aug-crop_flip" + RECIPE, "crop_flip", 1)
    truth = read_records(out / "groundtruth.csv")
    targets = groundtruth_targets(read_records(out / "results.csv"), 0.25)  # the top of each of the two budgets
    assert len(truth) == last["architectures"] == len(jobs) == len(targets) and {r.arch for r in truth} == set(targets)
    assert all(r.augment == "crop_flip" and r.train_iterations == 6 for r in truth)
    assert set(augments(jobs)) == {"crop_flip"}
