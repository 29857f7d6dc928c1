"""What dm_core's speed work buys: one table, each figure against its baseline, fp32 and bf16, eager and compiled.

    python benchmarks/speed.py --device cpu        # the table of the README's "Measured" section
    python benchmarks/speed.py --device cuda       # the same rows on a GPU (nothing to change)

Workload (the setting of issue 13): CIFAR-shaped random images (3 x 32 x 32, 10 classes; pixel values do not change
the cost), the paper's ConvNet (depth 3, width 128, instance norm, average pooling), 10 images per class.

- DM, seconds per iteration, 64 real images per class. Baseline: a reference-style loop written here
  (``reference_dm``): a freshly built network every iteration, then for each class a host-side permutation for its
  real batch, one augmentation draw applied to the real batch and to the class's synthetic images (only the drawn
  op computed, ``augment.apply_op``), one embedding of each, the loss added up; one SGD step. Candidate:
  ``dm_core.condense_dm`` with ``compile`` off and on.
- DSA, seconds per outer iteration at a reduced schedule (``--dsa-loops``, default 2 outer steps and 1 inner
  epoch; the paper's 10 / 50 at 10 ipc would take hours here): ``dm_core.condense_dsa``. Baseline: the same run with
  every augmentation op computed for every sample (the branchless path, which DSA took on a GPU before its groups
  were drawn on the host); candidate: only the drawn op (DSA has no compiled path).
- Training, seconds per epoch of ``dm_core.train_model`` on 500 images, batch 250 (2 steps, DSA augmentation):
  eager fp32 is the baseline of the compiled and bf16 rows; the first call's extra time is the compile time, and
  "break-even" is the number of epochs after which compiling has paid for itself.
- NAS, seconds per proxy trial: 400 training steps at batch 250 (200 epochs of a 500-image proxy set) plus a
  validation pass over 5,000 images, per architecture; compiled trials include one compile each (every trial of a
  search is a new architecture).

Timing: every variant first runs once (warm-up, and compile for compiled variants); then, ``--repeats`` times, every
variant of a block runs in turn (interleaved, so a change of machine load hits them alike), and each figure is the
median over repeats of t(long run) - t(short run), which leaves set-up out; a speed-up is the median over repeats
of the ratio of two variants timed in the same repeat. CUDA work is synchronised before each clock read. bf16 rows
run where the device computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX); elsewhere one small
training step in fp32 and in bf16 says how much slower bf16 is, and the rows are marked as not run (``--bf16 always``
runs them anyway). Inductor's cache is a fresh temporary folder
unless ``--warm-cache``, so compile times are cold ones. Prints a Markdown table and one JSON line.
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
from dm_core import (  # noqa: E402
    DMConfig,
    DSAConfig,
    ImageDataset,
    TrainConfig,
    augment,
    build_model,
    condense_dm,
    condense_dsa,
    evaluate_accuracy,
    reinit_,
    resolve_device,
    train_model,
)
from dm_core.device import make_generator  # noqa: E402
from dm_core.precision import precision_scope  # noqa: E402

NAS_TRIAL_STEPS, NAS_VAL_IMAGES = 400, 5000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def cifar_like(per_class: int, test: int, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(per_class)
    return ImageDataset("cifar-shaped", torch.randn(len(y), 3, 32, 32, generator=g), y,
                        torch.randn(test, 3, 32, 32, generator=g), torch.randint(0, 10, (test,), generator=g), 10,
                        (0.0,) * 3, (1.0,) * 3, tuple(str(c) for c in range(10)))


def reference_dm(data: ImageDataset, ipc: int, batch_real: int, model: str, iterations: int, device: torch.device,
                 precision: str = "fp32", seed: int = 0) -> torch.Tensor:
    """DM as the reference implementation runs it: a per-class loop around a freshly built network."""
    host = torch.Generator().manual_seed(seed)
    images = data.x_train.to(device)
    by_class = [torch.nonzero(data.y_train == c).flatten() for c in range(data.num_classes)]
    syn = torch.cat([images[idx[:ipc]] for idx in by_class]).clone().requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    ops = augment.OPS
    for _ in range(iterations):
        net = build_model(model, data.channels, data.num_classes, data.image_size).to(device).train()
        net.requires_grad_(False)
        loss = torch.zeros((), device=device)
        for c, idx in enumerate(by_class):
            real = images[idx[torch.randperm(len(idx), generator=host)[:batch_real]].to(device)]
            # Siamese: one draw (op and parameters) shared by the class's real batch and its synthetic images
            op = ops[int(torch.randint(len(ops), (1,), generator=host))]
            u = torch.rand(1, 11, generator=host).to(device)
            real = augment.apply_op(real, op, u.expand(len(real), 11))
            mine = augment.apply_op(syn[c * ipc:(c + 1) * ipc], op, u.expand(ipc, 11))
            with precision_scope(device, precision):
                real_mean = net.embed(real).detach().float().mean(0)
                syn_mean = net.embed(mine).float().mean(0)
            loss = loss + ((real_mean - syn_mean) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return syn


def bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Timing:
    """Interleaved timings of the runs of one block: per-unit seconds of every repeat, and the first call's extra."""

    def __init__(self, block: dict, short: int, long: int, device: torch.device, repeats: int):
        """``block``: name -> run(n), which does n units (iterations, epochs) after a set-up. Every run is called
        once first (warm-up; compiling for compiled runs); then each repeat runs every variant, in an order rotated
        from repeat to repeat, as t(long) - t(short), so set-up cancels out."""
        names = list(block)
        first = {name: clock(lambda run=block[name]: run(short + 1), device) for name in names}
        self.slopes, shorts = {name: [] for name in names}, {name: [] for name in names}
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                shorts[name].append(clock(lambda: block[name](short), device))
                self.slopes[name].append((clock(lambda: block[name](long), device) - shorts[name][-1]) / (long - short))
            print(f"  repeat {r + 1}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in self.slopes.items()),
                  file=sys.stderr, flush=True)
        self.seconds = {name: statistics.median(v) for name, v in self.slopes.items()}
        self.extra = {name: first[name] - statistics.median(shorts[name]) - self.seconds[name] for name in names}

    def speedup(self, baseline: str, name: str) -> float:
        """Median over repeats of baseline / candidate, each pair measured within the same repeat."""
        return statistics.median(b / c for b, c in zip(self.slopes[baseline], self.slopes[name]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch-real", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of DM and training")
    parser.add_argument("--dsa-repeats", type=int, default=3)
    parser.add_argument("--dsa-loops", type=int, nargs=2, default=[2, 1], metavar=("OUTER", "INNER"))
    parser.add_argument("--bf16", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor's usual cache (warm compiles)")
    parser.add_argument("--only", nargs="+", choices=("dm", "dsa", "train"), default=["dm", "dsa", "train"])
    parser.add_argument("--readme", type=Path, default=None,
                        help="also write the table into this README between the speed.py markers of its device kind "
                             "(<!-- speed.py cpu --> ... <!-- /speed.py cpu -->, or cuda)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args(argv)
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dm_speed_inductor_")

    device = resolve_device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores")
    loads = [os.getloadavg()[0]]
    run_bf16 = args.bf16 == "always" or (args.bf16 == "auto" and bf16_native(device))
    precisions = ["fp32", "bf16"] if run_bf16 else ["fp32"]
    data = cifar_like(per_class=max(100, args.batch_real), test=1000)
    rows, result = [], {"device": where, "torch": torch.__version__, "model": args.model, "repeats": args.repeats}

    def row(what, variant, seconds, unit, speedup=None, note=""):
        rows.append((what, variant, f"{seconds:.3f}", unit, f"{speedup:.2f}x" if speedup else "baseline", note))

    if "dm" in args.only:
        def dm_engine(precision, compile_mode):
            def run(n):
                condense_dm(data, DMConfig(ipc=args.ipc, iterations=n, batch_real=args.batch_real, model=args.model,
                                           precision=precision, compile=compile_mode, log_every=10 ** 9,
                                           checkpoint_every=10 ** 9), device=device, progress=False)
            return run

        for precision in precisions:
            base = f"reference loop, {precision}"
            block = {base: lambda n, p=precision: reference_dm(data, args.ipc, args.batch_real, args.model, n, device,
                                                                p),
                     f"dm_core eager, {precision}": dm_engine(precision, "off"),
                     f"dm_core compiled, {precision}": dm_engine(precision, "on")}
            print(f"DM {precision}", file=sys.stderr, flush=True)
            t = Timing(block, 0, 1, device, args.repeats)
            for name in block:
                row("DM (64 real/class)", name, t.seconds[name], "s/iteration",
                    None if name == base else t.speedup(base, name),
                    f"compile {t.extra[name]:.0f} s" if "compiled" in name else "")
            result[f"dm_{precision}"] = {"slopes": t.slopes, "compile_s": t.extra}
            loads.append(os.getloadavg()[0])

    if "dsa" in args.only:
        outer, inner = args.dsa_loops

        def dsa(precision):
            def run(n):
                condense_dsa(data, DSAConfig(ipc=args.ipc, iterations=n, batch_real=args.batch_real, model=args.model,
                                             precision=precision, outer_loop=outer, inner_loop=inner,
                                             log_every=10 ** 9, checkpoint_every=10 ** 9), device=device,
                             progress=False)
            return run

        def mixed_runs(x, params, run):
            """``augment.apply_runs`` by the branchless path: every op's work for every sample."""
            index = torch.arange(len(params.op)).repeat_interleave(run)
            every = augment.AugmentParams(params.op[index].to(x.device), params.u[index.to(params.u.device)])
            return augment._apply_mixed(x, every)

        def every_op(run):
            def patched(n):
                drawn, runs = augment._apply_drawn, augment.apply_runs
                augment._apply_drawn, augment.apply_runs = augment._apply_mixed, mixed_runs
                try:
                    run(n)
                finally:
                    augment._apply_drawn, augment.apply_runs = drawn, runs
            return patched

        block = {}
        for p in precisions:
            block[f"every op computed, {p}"] = every_op(dsa(p))
            block[f"only the drawn op, {p}"] = dsa(p)
        print("DSA", file=sys.stderr, flush=True)
        t = Timing(block, 0, 1, device, args.dsa_repeats)
        for name in block:
            base = name.replace("only the drawn op", "every op computed")
            row(f"DSA (outer {outer}, inner {inner})", name, t.seconds[name], "s/iteration",
                None if name == base else t.speedup(base, name))
        result["dsa"] = {"slopes": t.slopes}
        loads.append(os.getloadavg()[0])

    if "train" in args.only:
        x, y = data.x_train[:500], data.y_train[:500]
        net = build_model(args.model, 3, 10, (32, 32))

        def train(precision, compile_mode):
            def run(epochs):
                reinit_(net, make_generator(0, torch.device("cpu")))
                train_model(net, x, y, TrainConfig(epochs=epochs, batch_size=250, precision=precision,
                                                   compile=compile_mode), seed=0, device=device)
            return run

        block = {f"{'compiled' if c == 'on' else 'eager'}, {p}": train(p, c) for p in precisions for c in ("off", "on")}
        print("training", file=sys.stderr, flush=True)
        t = Timing(block, 1, 2, device, args.repeats)
        val = {p: clock(lambda p=p: evaluate_accuracy(net, data.x_test, data.y_test, device, precision=p), device)
               * NAS_VAL_IMAGES / len(data.y_test) for p in precisions}
        for name in block:
            note = ""
            if name.startswith("compiled"):
                saving = t.seconds[name.replace("compiled", "eager")] - t.seconds[name]
                note = f"compile {t.extra[name]:.0f} s; " + (
                    f"pays after {t.extra[name] / saving:.0f} epochs" if saving > 0 else "never pays")
            row("training (500 images, batch 250)", name, t.seconds[name], "s/epoch",
                None if name == "eager, fp32" else t.speedup("eager, fp32", name), note)
        trial = "NAS proxy trial (400 steps + 5,000 val)"
        steps = NAS_TRIAL_STEPS / 2  # epochs of 2 steps
        eager_fp32 = t.seconds["eager, fp32"] * steps + val["fp32"]
        for p in precisions:
            eager = t.seconds[f"eager, {p}"] * steps + val[p]
            compiled_trial = t.seconds[f"compiled, {p}"] * steps + val[p] + t.extra[f"compiled, {p}"]
            if p != "fp32":
                row(trial, f"eager, {p}", eager, "s/trial", eager_fp32 / eager)
            else:
                row(trial, "eager, fp32", eager, "s/trial")
            row(trial, f"compiled, {p}, one cold compile per trial", compiled_trial, "s/trial",
                eager_fp32 / compiled_trial)
        result["train"] = {"slopes": t.slopes, "compile_s": t.extra, "val_s": val}
        loads.append(os.getloadavg()[0])

    if not run_bf16:
        # how much slower bf16 is here, from one small training step of each
        probe_x, probe_y = data.x_train[:16].to(device), data.y_train[:16].to(device)
        probe = build_model(args.model, 3, 10, (32, 32)).to(device)

        def step(precision):
            with precision_scope(device, precision):
                loss = torch.nn.functional.cross_entropy(probe(probe_x).float(), probe_y)
            loss.backward()

        step("fp32"), step("bf16")
        ratio = statistics.median(clock(lambda: step("bf16"), device) / clock(lambda: step("fp32"), device)
                                  for _ in range(3))
        result["bf16_over_fp32_step"] = ratio
        rows.append(("bf16, every row", "not run: no native bf16 on this device", "", "", "",
                     f"one training step (16 images) took {ratio:.1f}x its fp32 time"))

    result["load_average"] = loads
    table = "\n".join([
        f"{where}, torch {torch.__version__}; {args.model}, CIFAR-shaped data, {args.ipc} images/class; "
        f"1-minute load average {min(loads):.1f} to {max(loads):.1f} during the run; times are medians of "
        f"{args.repeats} interleaved repeats ({args.dsa_repeats} for DSA), speed-ups the median of the per-repeat "
        f"ratios", "", "| what | variant | time | unit | speed-up | note |", "|---|---|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in rows)])
    print("\n" + table)
    print(json.dumps(result))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result) + "\n")
    if args.readme is not None:
        splice(args.readme, device.type, table)
    return 0


def splice(readme: Path, kind: str, table: str) -> None:
    """Put ``table`` between the README's markers for this device kind (the text outside them is kept)."""
    start, end = f"<!-- speed.py {kind} -->", f"<!-- /speed.py {kind} -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"error: {readme} has no {start} ... {end} markers: add them where the table goes")
    head, rest = text.split(start, 1)
    readme.write_text(f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    raise SystemExit(main())
