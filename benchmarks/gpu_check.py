"""The prepared GPU check's correctness half (issue 23): on CUDA, dm_core computes what it computes on the CPU for the
same random draws, compiled what eager computes, bf16 evaluation what fp32 evaluation gives, and K stacked networks
what K networks trained one after another give. ``gpu_check.sh`` runs this, then speed.py's CUDA rows.

    python benchmarks/gpu_check.py --device cuda --out DIR          # on a GPU (about 2 minutes on one H200)
    python benchmarks/gpu_check.py --device cpu --smoke --out DIR   # the same code paths on the CPU, CI-sized

"The same draws" across devices: a CPU generator and a CUDA generator seeded alike give different numbers, so the
CUDA runs here draw every random number on the CPU and move it to the device (``cpu_draws``, check-only: it patches
the generator factory and torch's random functions for the duration of one run). Each draw is then the CPU run's,
and what remains is float rounding: fp32 everywhere (TF32 off, as ``precision_scope`` sets for fp32), relative
differences measured as ||a - b|| / ||b||. Training turns rounding into growing differences (a network whose
instance norm meets a nearly constant channel amplifies it), so exactness is checked in float64, where rounding
cannot hide a different computation, and the fp32 runs are checked on their accuracies.

Writes ``checks.json`` (every number, pass or fail per check) under --out and prints one line per check; exits 1
if any check failed. Needs dm_core only (torch, torchvision, numpy, tqdm).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dm_core.engine  # noqa: E402
import dm_core.many  # noqa: E402
import dm_core.train  # noqa: E402
from dm_core import (  # noqa: E402
    DMConfig,
    ImageDataset,
    TrainConfig,
    TrainJob,
    build_model,
    condense_dm,
    evaluate_accuracy,
    reinit_,
    resolve_device,
    train_many,
    train_model,
)
from dm_core.compile import unavailable_reason  # noqa: E402

CPU = torch.device("cpu")


def learnable(channels: int, size: int, per_class: int, test: int, seed: int = 0) -> ImageDataset:
    """Ten smooth class templates under noise of twice their size: ConvNet-w32 reaches about 40% after 3 epochs of
    200 images and 85% after 10, so accuracies mean something (random labels would leave every network at 10%) and
    margins are small enough for rounding to matter."""
    g = torch.Generator().manual_seed(seed)
    templates = F.avg_pool2d(torch.randn(10, channels, size, size, generator=g), 5, 1, 2) * 0.75

    def draw(n):
        y = torch.arange(n) % 10
        return templates[y] + torch.randn(n, channels, size, size, generator=g), y

    (x, y), (xt, yt) = draw(10 * per_class), draw(test)
    return ImageDataset("learnable", x, y, xt, yt, 10, (0.0,) * channels, (1.0,) * channels,
                        tuple(str(c) for c in range(10)))


# -- the same draws on any device --------------------------------------------------------------------------------

@contextlib.contextmanager
def cpu_draws():
    """Within: dm_core's generators live on the CPU and every random tensor meant for another device is drawn on the
    CPU and moved there, so a CUDA run makes the CPU run's draws."""
    def cpu_generator(seed, device):
        return torch.Generator().manual_seed(int(seed))

    def moved(fn):
        def draw(*args, generator=None, device=None, **kw):
            if generator is not None and generator.device.type == "cpu" and device is not None \
                    and torch.device(device).type != "cpu":
                return fn(*args, generator=generator, device="cpu", **kw).to(device)
            return fn(*args, generator=generator, device=device, **kw)
        return draw

    uniform = torch.Tensor.uniform_

    def uniform_(self, a=0.0, b=1.0, *, generator=None):
        if generator is not None and generator.device.type == "cpu" and self.device.type != "cpu":
            return self.copy_(uniform(torch.empty(self.shape, dtype=self.dtype), a, b, generator=generator))
        return uniform(self, a, b, generator=generator)

    saved = {(torch, name): getattr(torch, name) for name in ("rand", "randn", "randint", "randperm")}
    saved.update({(module, "make_generator"): module.make_generator
                  for module in (dm_core.engine, dm_core.train, dm_core.many)})
    try:
        for (module, name), fn in saved.items():
            setattr(module, name, cpu_generator if name == "make_generator" else moved(fn))
        torch.Tensor.uniform_ = uniform_
        yield
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)
        torch.Tensor.uniform_ = uniform


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def weights(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().double().cpu().flatten() for t in net.state_dict().values() if t.is_floating_point()])


# -- the checks ----------------------------------------------------------------------------------------------------

def check_dm_same_draws(device, smoke):
    """A DM set made on the device with the CPU's draws equals the CPU's set up to rounding."""
    data = learnable(3, 32, 64, 100)
    config = DMConfig(ipc=2, iterations=2 if smoke else 10, batch_real=32, model="convnet-w32", compile="off",
                      log_every=1)
    on_cpu = condense_dm(data, config, device=CPU, progress=False)
    with cpu_draws():
        on_device = condense_dm(data, config, device=device, progress=False)
    rel = relative(on_device.images, on_cpu.images)
    losses = [r for (_, r) in on_cpu.meta["loss_history"]], [r for (_, r) in on_device.meta["loss_history"]]
    loss_rel = max(abs(a - b) / abs(a) for a, b in zip(*losses))
    return {"ok": rel < 1e-3 and loss_rel < 1e-3, "images_relative_difference": rel,
            "loss_relative_difference": loss_rel, "limit": 1e-3}


def check_training_same_draws(device, smoke):
    """train_model on the device with the CPU's draws: float64 weights equal the CPU's to 1e-9; fp32 accuracies
    within 2 points."""
    out = {}
    for dtype, name in ((torch.float64, "fp64"), (torch.float32, "fp32")):
        with default_dtype(dtype):
            data = learnable(3, 32, 10 if smoke else 20, 200 if smoke else 1000)
            x, y = data.x_train.to(dtype), data.y_train
            config = TrainConfig(epochs=2 if smoke else 20, batch_size=64, compile="off")
            nets = {}
            for where in (CPU, device):
                net = reinit_(build_model("convnet-w32", 3, 10, (32, 32)), torch.Generator().manual_seed(0))
                with cpu_draws() if where.type != "cpu" else contextlib.nullcontext():
                    nets[where.type] = train_model(net, x, y, config, seed=0, device=where)
            cpu_net, dev_net = nets["cpu"], nets[device.type]
            out[f"{name}_weights_relative_difference"] = relative(weights(dev_net), weights(cpu_net))
            out[f"{name}_accuracy_cpu"] = evaluate_accuracy(cpu_net, data.x_test.to(dtype), data.y_test, CPU)
            out[f"{name}_accuracy_device"] = evaluate_accuracy(dev_net, data.x_test.to(dtype), data.y_test, device)
    out["ok"] = (out["fp64_weights_relative_difference"] < 1e-9
                 and abs(out["fp32_accuracy_cpu"] - out["fp32_accuracy_device"]) <= 0.02)
    return out


def check_compiled_matches_eager(device, smoke):
    """Compiled training and DM on the device against eager: weights within the CPU test's tolerance, accuracies
    within 3 points, DM images within 1e-4."""
    reason = unavailable_reason(device)
    if reason is not None:
        return {"ok": True, "skipped": reason}
    data = learnable(3, 32, 20, 500)
    nets = {}
    for mode in ("off", "on"):
        net = reinit_(build_model("convnet-w32", 3, 10, (32, 32)), torch.Generator().manual_seed(0))
        nets[mode] = train_model(net, data.x_train, data.y_train, TrainConfig(epochs=10, batch_size=64, compile=mode),
                                 seed=0, device=device)
    accuracy = {m: evaluate_accuracy(n, data.x_test, data.y_test, device) for m, n in nets.items()}
    weights_close = all(torch.allclose(a, b, atol=2e-3, rtol=2e-2) for a, b in
                        zip(nets["off"].parameters(), nets["on"].parameters()))
    config = dict(ipc=2, iterations=3, batch_real=32, model="convnet-w32")
    sets = {m: condense_dm(data, DMConfig(**config, compile=m), device=device, progress=False) for m in ("off", "on")}
    rel = relative(sets["on"].images, sets["off"].images)
    return {"ok": weights_close and abs(accuracy["on"] - accuracy["off"]) <= 0.03 and rel < 1e-4,
            "training_weights_close": weights_close, "accuracy_eager": accuracy["off"],
            "accuracy_compiled": accuracy["on"], "dm_images_relative_difference": rel}


def check_bf16_evaluation(device, smoke):
    """One fp32-trained network evaluated in fp32 and in bf16 autocast: accuracies within 1 point."""
    data = learnable(3, 32, 20, 300 if smoke else 5000)
    model = "convnet-w32" if smoke else "convnet"  # bf16 is 20x slower than fp32 on a CPU without native bf16
    net = reinit_(build_model(model, 3, 10, (32, 32)), torch.Generator().manual_seed(0))
    net = train_model(net, data.x_train, data.y_train, TrainConfig(epochs=3 if smoke else 20, batch_size=64,
                                                                   compile="off"), seed=0, device=device)
    fp32 = evaluate_accuracy(net, data.x_test, data.y_test, device, precision="fp32")
    bf16 = evaluate_accuracy(net, data.x_test, data.y_test, device, precision="bf16")
    return {"ok": abs(fp32 - bf16) <= 0.01 and fp32 > (0.2 if smoke else 0.5), "fp32": fp32, "bf16": bf16}


def check_many_stacked(device, smoke):
    """K networks stacked against K one after another on the device: float64 weights equal to 1e-9, fp32
    accuracies within 2 points each."""
    k = 3 if smoke else 5
    out = {"networks": k}
    for dtype, name in ((torch.float64, "fp64"), (torch.float32, "fp32")):
        with default_dtype(dtype):
            data = learnable(1, 28, 10, 200 if smoke else 1000)
            x, xt = data.x_train.to(dtype), data.x_test.to(dtype)
            config = TrainConfig(epochs=3 if smoke else 30, batch_size=256, compile="off").resolve("mnist")
            jobs = [TrainJob("convnet-w32", x, data.y_train, config, seed=s, tests=((xt, data.y_test),),
                             num_classes=10, keep_model=True) for s in range(k)]
            one_by_one = train_many(jobs, device, workers=1)
            stacked = train_many(jobs, device, mode="stacked")
            out[f"{name}_weights_relative_difference"] = max(
                relative(weights(b.model), weights(a.model)) for a, b in zip(one_by_one, stacked))
            out[f"{name}_accuracy_difference"] = max(abs(a.accuracies[0] - b.accuracies[0])
                                                     for a, b in zip(one_by_one, stacked))
            out[f"{name}_accuracies"] = [r.accuracies[0] for r in stacked]
    out["ok"] = out["fp64_weights_relative_difference"] < 1e-9 and out["fp32_accuracy_difference"] <= 0.02
    return out


CHECKS = {"dm_same_draws": check_dm_same_draws, "training_same_draws": check_training_same_draws,
          "compiled_matches_eager": check_compiled_matches_eager, "bf16_evaluation": check_bf16_evaluation,
          "many_stacked": check_many_stacked}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True, help="folder for checks.json")
    parser.add_argument("--smoke", action="store_true", help="fewer steps; no compiling (CI-sized)")
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.smoke and "compiled_matches_eager" in args.only:
        args.only.remove("compiled_matches_eager")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "smoke": args.smoke, "checks": {}}
    failed = []
    for name in args.only:
        started = time.perf_counter()
        try:
            outcome = CHECKS[name](device, args.smoke)
        except Exception as exc:  # a check that crashes is a failed check; the others still run
            outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        outcome["seconds"] = round(time.perf_counter() - started, 1)
        report["checks"][name] = outcome
        if not outcome["ok"]:
            failed.append(name)
        shown = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in outcome.items() if k != "traceback"}
        print(f"{'PASS' if outcome['ok'] else 'FAIL'} {name}: {shown}", flush=True)
        (args.out / "checks.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(args.only) - len(failed)} of {len(args.only)} checks passed" + (f"; failed: {failed}" if failed
                                                                                   else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
