"""Where speed.py's NAS proxy search spends its time, and the most that work outside the convolutions could buy.

    python benchmarks/nas_ceiling.py --parts search convs formats --json-out benchmarks/results/nas_ceiling_cpu.json

1. The search of speed.py's NAS row (the same 8 architectures, one repeat each, ``--steps`` training steps on a
   CIFAR-shaped 10-ipc set, then validation on 1,000 images), as the toolkit runs it today (``train_many`` in this
   process), timed per architecture, then once more under ``torch.profiler``: self time per operator family.
   Amdahl's bound: were every operator outside the convolutions free, the search would be (profiled total) /
   (convolution time) faster; a 1.35x search needs the convolutions themselves to be faster unless that bound is
   well above 1.35.
2. The convolutions' own rate: the search's largest convolution (64 -> 64 channels, 3x3, 32 x 32, batch 100),
   forward and forward + backward, in NCHW (what training runs) and in channels_last, in GFLOP/s (3x the forward
   FLOPs for forward + backward; median of ``--repeats``).
3. ``--parts formats``: each architecture trained in channels_last against NCHW (the same steps, median of
   ``--repeats`` interleaved runs). The trained weights differ at float-rounding level (another summation order), so
   this only says where a memory-format choice could pay, not a change with the same results.
4. ``--parts compiled``: the costliest architecture's training step eager against ``torch.compile``d (slope of 10-
   against 30-step runs, so the compile falls out; median of ``--repeats``), and its first 2-step run, compile
   included (a cold compile: inductor's cache is a fresh temporary folder). Compiled results also differ at
   float-rounding level.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import cifar_like, clock, nas_architectures  # noqa: E402

import dm_core.train as train_module  # noqa: E402
from dm_core import TrainConfig, TrainJob, atomic_write_text, build_model, train_many  # noqa: E402

CPU = torch.device("cpu")
FAMILIES = (("convolution", ("convolution",)), ("normalisation", ("norm",)), ("pooling", ("pool",)),
            ("activation", ("relu", "threshold", "sigmoid", "clamp", "leaky")), ("linear", ("mm", "addmm", "bmm")))


def family(op: str) -> str:
    for name, needles in FAMILIES:
        if any(needle in op for needle in needles):
            return name
    return "rest"


def search(archs, x, y, xv, yv, config) -> list[float]:
    """The search as today's code runs it, one architecture at a time; seconds per architecture."""
    seconds = []
    for spec in archs:
        start = time.perf_counter()
        train_many([TrainJob(spec, x, y, config, seed=0, tests=((xv, yv),), num_classes=10)], "cpu", workers=1)
        seconds.append(time.perf_counter() - start)
    return seconds


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(clock(fn, CPU) for _ in range(repeats))


def conv_rates(repeats: int) -> dict:
    """GFLOP/s of the search's largest convolution, forward and forward + backward, in both memory formats."""
    torch.manual_seed(0)
    x = torch.randn(100, 64, 32, 32)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    flops = 2 * 100 * 32 * 32 * 64 * 64 * 9
    rates = {}
    for fmt_name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        c, xx = conv.to(memory_format=fmt), x.contiguous(memory_format=fmt).requires_grad_(True)
        grad = torch.randn_like(c(xx))
        with torch.no_grad():
            rates[f"{fmt_name} forward"] = flops / median_seconds(lambda c=c, xx=xx: c(xx), repeats) / 1e9
        both = median_seconds(lambda c=c, xx=xx, grad=grad: c(xx).backward(grad), repeats)
        rates[f"{fmt_name} forward+backward"] = 3 * flops / both / 1e9
    return rates


def formats(archs, x, y, config, repeats: int) -> dict:
    """Seconds to train each architecture, NCHW against channels_last (interleaved; medians)."""
    chosen = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    original = train_module.memory_format
    out = {}
    try:
        for spec in archs:
            times = {name: [] for name in chosen}
            for _ in range(repeats):
                for name, fmt in chosen.items():
                    train_module.memory_format = lambda device, precision, fmt=fmt: fmt
                    net = build_model(spec, 3, 10, (32, 32))
                    start = time.perf_counter()
                    train_module.train_model(net, x, y, config, seed=0, device="cpu")
                    times[name].append(time.perf_counter() - start)
            out[spec.name] = {name: statistics.median(t) for name, t in times.items()}
    finally:
        train_module.memory_format = original
    return out


def compiled_steps(spec, x, y, repeats: int) -> dict:
    """Seconds per training step of ``spec``, eager against compiled (``compile="on"``): the slope from 10- to
    30-step runs (the compile itself falls out; median of ``repeats``), and the first 2-step run's seconds."""
    out = {}
    for mode in ("off", "on"):
        def run(steps, mode=mode):
            net = build_model(spec, 3, 10, (32, 32))
            start = time.perf_counter()
            train_module.train_model(net, x, y, TrainConfig(iterations=steps, batch_size=256, compile=mode)
                                     .resolve("cifar10"), seed=0, device="cpu")
            return time.perf_counter() - start

        first = run(2)
        slopes = [(run(30) - run(10)) / 20 for _ in range(repeats)]
        out["eager" if mode == "off" else "compiled"] = {"first_run_seconds": first,
                                                          "step_seconds": statistics.median(slopes)}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per trial (speed.py's --nas-steps)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", nargs="+", choices=("search", "convs", "formats", "compiled"),
                        default=["search", "convs"], help="formats: channels_last per architecture; compiled: eager "
                        "against compiled steps of the search's costliest architecture")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="nas_ceiling_inductor_")  # cold compiles

    archs = nas_architectures(8)
    proxy = cifar_like(10, 1000, seed=1)
    x, y, xv, yv = proxy.x_train, proxy.y_train, proxy.x_test, proxy.y_test
    config = TrainConfig(iterations=args.steps, batch_size=256, compile="off").resolve("cifar10")
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__, "steps": args.steps}
    print(f"NAS proxy search's architectures, {args.steps} steps, CPU, {result['threads']} threads, torch "
          f"{torch.__version__}")
    if "search" in args.parts:
        search(archs[:1], x, y, xv, yv, config)  # warm-up
        per_arch = search(archs, x, y, xv, yv, config)
        with torch.profiler.profile() as prof:
            search(archs, x, y, xv, yv, config)
        by_family: dict[str, float] = {}
        for event in prof.key_averages():
            if event.key.startswith("aten::"):
                by_family[family(event.key)] = by_family.get(family(event.key), 0.0) + event.self_cpu_time_total / 1e6
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
        by_family["rest"] = by_family.get("rest", 0.0) + total - sum(by_family.values())
        result.update({"seconds_per_architecture": dict(zip((a.name for a in archs), per_arch)),
                       "search_seconds": sum(per_arch), "profiled_seconds": total, "family_seconds": by_family,
                       "bound_if_only_convolutions_took_time": total / by_family["convolution"]})
        print(f"search (8 architectures x 1 + 1,000 validation images): {sum(per_arch):.1f} s unprofiled; by "
              f"architecture:")
        for name, seconds in result["seconds_per_architecture"].items():
            print(f"  {name:44s} {seconds:6.2f} s  {100 * seconds / sum(per_arch):4.1f} %")
        print(f"profiled self time {total:.1f} s, by operator family:")
        for name, seconds in sorted(by_family.items(), key=lambda kv: -kv[1]):
            print(f"  {name:14s} {seconds:6.2f} s  {100 * seconds / total:4.1f} %")
        print(f"bound: with every non-convolution operator free, "
              f"{result['bound_if_only_convolutions_took_time']:.2f}x")
    if "convs" in args.parts:
        result["conv_gflops"] = conv_rates(args.repeats)
        print("largest convolution (64->64, 3x3, 32x32, batch 100):")
        for name, rate in result["conv_gflops"].items():
            print(f"  {name:32s} {rate:6.1f} GFLOP/s")
    if "formats" in args.parts:
        result["format_seconds"] = formats(archs, x, y, config, args.repeats)
        print("whole trainings, NCHW against channels_last:")
        for name, seconds in result["format_seconds"].items():
            print(f"  {name:44s} NCHW {seconds['nchw']:6.2f} s, channels_last {seconds['channels_last']:6.2f} s: "
                  f"{seconds['nchw'] / seconds['channels_last']:.2f}x")
    if "compiled" in args.parts:
        seconds = result.get("seconds_per_architecture")
        costliest = (max(archs, key=lambda a: seconds[a.name]) if seconds else  # else the one measured 2026-12-07
                     next(a for a in archs if a.name == "convnet-d4-w64-relu-layernorm-none"))
        result["compiled"] = {"architecture": costliest.name, **compiled_steps(costliest, x, y, args.repeats)}
        eager, comp = result["compiled"]["eager"], result["compiled"]["compiled"]
        print(f"{costliest.name}: eager {1e3 * eager['step_seconds']:.0f} ms/step, compiled "
              f"{1e3 * comp['step_seconds']:.0f} ms/step ({eager['step_seconds'] / comp['step_seconds']:.2f}x); "
              f"first 2-step run {eager['first_run_seconds']:.1f} s eager, {comp['first_run_seconds']:.1f} s "
              f"compiled")
    result["load"] = os.getloadavg()[0]
    print(f"load average at the end: {result['load']:.1f}")
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
