"""Time DM iterations of the engine against a plain per-class loop of the same maths, and DSA outer iterations.

    python benchmarks/dm_speed.py --dataset mnist --ipc 10 --device cpu --model convnet-w32 --batch-real 64

What is timed, all on one device in one process:
- engine: ``dm_core.condense_dm`` (in-place re-init, device-side sampling, all classes' real images in one forward
  pass and all synthetic images in another on CUDA, about 128 real images per pass on the CPU, bf16 + channels_last
  on CUDA). Per-iteration time is the slope between a
  short and a long run, so set-up (data to the device, initial images) is not counted.
- loop: the same maths written the plain way of research code: a newly constructed network each iteration, and for
  each class a host-side ``randperm`` of that class's indices, its own augmentation call, its own two forward passes.
- dsa (with --dsa): ``dm_core.condense_dsa`` per outer iteration at the paper's schedule for this ipc, and the time
  each method needs for its default budget (DM 20,000 iterations, DSA 1,000 outer iterations).
CUDA work is synchronised before every clock read. Prints a Markdown table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dm_core import DMConfig, DSAConfig, augment, build_model, condense_dm, condense_dsa, load_dataset, resolve_device
from dm_core.device import make_generator


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def plain_loop_dm(data, ipc: int, iterations: int, batch_real: int, model: str, device: torch.device, seed: int = 0):
    """DM as a per-class Python loop: the baseline the engine is measured against (same loss, same optimiser)."""
    torch.manual_seed(seed)
    x = data.x_train.to(device)
    by_class = [torch.nonzero(data.y_train == c).flatten() for c in range(data.num_classes)]
    syn = torch.cat([x[idx[torch.randperm(len(idx))[:ipc]]] for idx in by_class]).clone().requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    generator = make_generator(seed, device)
    for _ in range(iterations):
        net = build_model(model, data.channels, data.num_classes, data.image_size).to(device).train()
        net.requires_grad_(False)
        loss = torch.zeros((), device=device)
        for c, idx in enumerate(by_class):
            real = x[idx[torch.randperm(len(idx))[:batch_real]].to(device)]
            params = augment.sample_params(1, generator, device)
            zeros_real = torch.zeros(len(real), dtype=torch.long, device=device)
            zeros_syn = torch.zeros(ipc, dtype=torch.long, device=device)
            real_mean = net.embed(augment.apply(real, params, zeros_real)).mean(0).detach()
            syn_mean = net.embed(augment.apply(syn[c * ipc:(c + 1) * ipc], params, zeros_syn)).mean(0)
            loss = loss + ((real_mean - syn_mean) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return syn


def per_iteration(runs: dict, short: int, long: int, device: torch.device, repeats: int) -> dict:
    """Seconds per iteration of each run: median over repeats of (t(long) - t(short)) / (long - short).

    The runs are interleaved within each repeat, so a change in machine load affects them alike.
    """
    for run in runs.values():
        run(1)  # warm-up: allocator, kernels, autotuning
    slopes = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t_short = timed(lambda: run(short), device)
            t_long = timed(lambda: run(long), device)
            slopes[name].append((t_long - t_short) / (long - short))
    return {name: statistics.median(values) for name, values in slopes.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-root")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--batch-real", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=10, help="iterations in the long run of each timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dsa", action="store_true", help="also time DSA outer iterations")
    parser.add_argument("--dsa-iterations", type=int, default=2)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_root)
    config = DMConfig(ipc=args.ipc, batch_real=args.batch_real, model=args.model, log_every=10 ** 9)

    def engine(n):
        condense_dm(data, DMConfig(**{**config.__dict__, "iterations": n}), device=device, progress=False)

    def loop(n):
        plain_loop_dm(data, args.ipc, n, args.batch_real, args.model, device)

    short = 2
    times = per_iteration({"engine": engine, "loop": loop}, short, short + args.iterations, device, args.repeats)
    t_engine, t_loop = times["engine"], times["loop"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = [("DM engine (batched)", t_engine), ("DM plain per-class loop", t_loop)]
    result = {"device": where, "dataset": data.name, "ipc": args.ipc, "model": args.model,
              "batch_real": args.batch_real, "dm_engine_ms": 1000 * t_engine, "dm_loop_ms": 1000 * t_loop,
              "loop_over_engine": t_loop / t_engine, "torch": torch.__version__}

    if args.dsa:
        dsa_config = DSAConfig(ipc=args.ipc, batch_real=args.batch_real, model=args.model, log_every=10 ** 9)

        def dsa(n):
            condense_dsa(data, DSAConfig(**{**dsa_config.__dict__, "iterations": n}), device=device, progress=False)

        t_dsa = per_iteration({"dsa": dsa}, 1, 1 + args.dsa_iterations, device, 1)["dsa"]
        rows.append((f"DSA outer iteration (outer, inner) = {dsa_config.loops}", t_dsa))
        result.update(dsa_outer_ms=1000 * t_dsa, dsa_loops=list(dsa_config.loops),
                      dm_default_budget_h=20_000 * t_engine / 3600, dsa_default_budget_h=1_000 * t_dsa / 3600,
                      dsa_over_dm_budget=(1_000 * t_dsa) / (20_000 * t_engine))

    print(f"\n{data.name}, {args.ipc} images/class, {args.model}, batch_real {args.batch_real}, on {where}, "
          f"torch {torch.__version__}\n")
    print("| what | ms / iteration | vs engine |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / t_engine:.2f}x |")
    if args.dsa:
        print(f"\nTo the default budget: DM 20,000 iterations = {result['dm_default_budget_h']:.2f} h; DSA 1,000 outer "
              f"iterations = {result['dsa_default_budget_h']:.2f} h; DSA / DM = {result['dsa_over_dm_budget']:.1f}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
