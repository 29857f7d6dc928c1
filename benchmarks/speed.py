"""What dm_core's speed work buys: one table, each figure against its baseline, fp32 and bf16, eager and compiled.

    python benchmarks/speed.py --device cpu --readme   # the table of benchmarks/README.md
    python benchmarks/speed.py --device cuda --readme  # the same rows on a GPU (nothing to change)

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
  were drawn on the host); candidates: only the drawn op, eager and with the inner loop's training steps compiled
  (the matching step stays eager: torch.compile has no double backward).
- Training, seconds per epoch of ``dm_core.train_model`` on 500 images, batch 250 (2 steps, DSA augmentation):
  eager fp32 is the baseline of the compiled and bf16 rows; the first call's extra time is the compile time, and
  "break-even" is the number of epochs after which compiling has paid for itself.
- NAS, seconds per proxy trial: 400 training steps at batch 250 (200 epochs of a 500-image proxy set) plus a
  validation pass over 5,000 images, per architecture; compiled trials include one compile each (every trial of a
  search is a new architecture).
- Pooling (``--only pool``): one network trained from scratch (``train_model``, 30 epochs of ConvNet-w32 on a
  10-ipc MNIST-shaped set, 10 epochs of ConvNet-128 on a CIFAR-shaped one) then tested (10,000 and 2,000 images),
  whole runs: with torch's ``nn.AvgPool2d`` (the network before issue 23) against dm_core's ``AvgPool2x2``; the note
  says whether the trained weights are equal bit for bit.
- Many trainings at once (issue 23, ``--only many``): K = 1, 5, 20 networks trained from scratch on a 10-ipc set
  (ConvNet-w32 on MNIST-shaped images, the paper's ConvNet on CIFAR-shaped ones), ``--many-epochs`` epochs each,
  whole runs timed (on a loaded machine, slopes of long against short runs came out negative). Baseline: today's
  path, ``train_model`` K times in sequence in this process (torch's threads); candidate: ``dm_core.train_many`` with
  ``--workers`` (auto: from 4 cores worker processes of one thread per core on the CPU, else in sequence; the
  networks stacked on a GPU), whose forkserver is started before the timing (the end-to-end rows include that
  start), and where auto stays in this process, also worker processes, one per core. All eager (the stacked path
  does not compile).
- NAS proxy search (``--only nas``): 8 architectures drawn (seed 0) from the 720-space at widths 32 and 64, 2
  repeats each, ``--nas-steps`` steps on a CIFAR-shaped 10-ipc proxy set plus validation on 1,000 images, whole
  searches timed. Baseline: the ``nas.trial`` path before issue 23 (networks with torch's ``nn.AvgPool2d``,
  ``train_model`` then ``evaluate_accuracy`` at batch 128, one trial after another); candidate: the 16 trials
  through ``train_many`` (and, where ``auto`` runs them in this process, through worker processes, one per core).
- End to end (``--only e2e``): ``python -m dm_core evaluate SET --repeats 5 --epochs E --model convnet-w32`` of a
  10-ipc random selection of MNIST (MNIST-shaped random images when MNIST is not under --data-root), whole commands
  timed: ``--workers auto`` against ``--workers 1`` (and ``--workers CORES`` where auto does not take worker
  processes) and, with ``--baseline-rev REV``, against that revision's
  dm_core (``git archive``), i.e. today's path. Equal accuracies are checked where the draws are the same.
- Scaling with cores (``--only scaling``): K networks (ConvNet-w32, MNIST-shaped) in sequence with 1, 2, 4, ...
  threads and through ``train_many`` with 2, 4, ... workers of one thread, up to the cores there are.

Timing: every variant first runs once (warm-up, and compile for compiled variants); then, ``--repeats`` times, every
variant of a block runs in turn (interleaved, so a change of machine load hits them alike), and each figure is the
median over repeats of t(long run) - t(short run), which leaves set-up out; a speed-up is the median over repeats
of the ratio of two variants timed in the same repeat. CUDA work is synchronised before each clock read. bf16 rows
run where the device computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX); elsewhere one small
training step in fp32 and in bf16 says how much slower bf16 is, and the rows are marked as not run (``--bf16 always``
runs them anyway). Inductor's cache is a fresh temporary folder
unless ``--warm-cache``, so compile times are cold ones. The 1-minute load average is recorded after every block (on
a shared machine, compare only figures of one run). Prints a Markdown table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dm_core import (  # noqa: E402
    ConvNetSpec,
    DMConfig,
    DSAConfig,
    ImageDataset,
    TrainConfig,
    TrainJob,
    augment,
    build_model,
    condense_dm,
    condense_dsa,
    evaluate_accuracy,
    reinit_,
    resolve_device,
    train_many,
    train_model,
)
from dm_core.device import make_generator  # noqa: E402
from dm_core.many import available_cores  # noqa: E402
from dm_core.precision import precision_scope  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAS_TRIAL_STEPS, NAS_VAL_IMAGES = 400, 5000
README = ROOT / "benchmarks" / "README.md"


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


def mnist_like(per_class: int, test: int, seed: int = 0) -> ImageDataset:
    """MNIST-shaped random images (1 x 28 x 28, 10 classes): the cost of MNIST without the download."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(per_class)
    return ImageDataset("mnist-shaped", torch.randn(len(y), 1, 28, 28, generator=g), y,
                        torch.randn(test, 1, 28, 28, generator=g), torch.randint(0, 10, (test,), generator=g), 10,
                        (0.0,), (1.0,), tuple(str(c) for c in range(10)))


def nas_architectures(count: int = 8, seed: int = 0) -> list[ConvNetSpec]:
    """``count`` distinct architectures drawn from the 720-space at widths 32 and 64 (the CPU's budget)."""
    g = torch.Generator().manual_seed(seed)
    choices = dict(depth=(1, 2, 3, 4), width=(32, 64), act=("sigmoid", "relu", "leakyrelu"),
                   norm=("none", "batchnorm", "layernorm", "instancenorm", "groupnorm"),
                   pool=("none", "maxpool", "avgpool"))
    found: list[ConvNetSpec] = []
    while len(found) < count:
        spec = ConvNetSpec(**{k: v[int(torch.randint(len(v), (1,), generator=g))] for k, v in choices.items()})
        if spec not in found:
            found.append(spec)
    return found


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
                run = block[name]
                shorts[name].append(clock(lambda run=run: run(short), device))
                self.slopes[name].append((clock(lambda run=run: run(long), device) - shorts[name][-1]) / (long - short))
            print(f"  repeat {r + 1}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in self.slopes.items()),
                  file=sys.stderr, flush=True)
        self.seconds = {name: statistics.median(v) for name, v in self.slopes.items()}
        self.extra = {name: first[name] - statistics.median(shorts[name]) - self.seconds[name] for name in names}

    def speedup(self, baseline: str, name: str) -> float:
        """Median over repeats of baseline / candidate, each pair measured within the same repeat."""
        return statistics.median(b / c for b, c in zip(self.slopes[baseline], self.slopes[name]))


class WallTiming(Timing):
    """Whole runs, interleaved: each repeat runs every variant once (order rotated), no warm-up beyond ``warm``."""

    def __init__(self, block: dict, device: torch.device, repeats: int, warm: bool = True):
        names = list(block)
        if warm:
            for name in names:
                block[name]()
        self.slopes = {name: [] for name in names}
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                self.slopes[name].append(clock(block[name], device))
            print(f"  repeat {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in self.slopes.items()),
                  file=sys.stderr, flush=True)
        self.seconds = {name: statistics.median(v) for name, v in self.slopes.items()}
        self.extra = {name: 0.0 for name in names}


def with_threads(threads: int | None, fn):
    """``fn`` run with ``threads`` torch threads (None: as they are), restored afterwards."""
    def run(*args):
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(before)
    return run


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
    blocks = ("dm", "dsa", "train", "pool", "many", "nas", "e2e", "scaling")
    parser.add_argument("--only", nargs="+", choices=blocks, default=list(blocks))
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    parser.add_argument("--workers", default="auto", help="train_many's workers in the many, nas and e2e rows")
    parser.add_argument("--many-k", type=int, nargs="+", default=[1, 5, 20], help="networks trained at once")
    parser.add_argument("--many-epochs", type=int, nargs=2, default=[30, 3], metavar=("W32", "W128"),
                        help="epochs of each training in the many rows, per workload (the scaling rows take W32)")
    parser.add_argument("--many-repeats", type=int, default=3)
    parser.add_argument("--many-stacked", action="store_true", help="also time the stacked path on the CPU")
    parser.add_argument("--many-models", nargs="+", choices=("w32", "w128"), default=["w32", "w128"],
                        help="the many rows' workloads: ConvNet-w32 MNIST-shaped, ConvNet-128 CIFAR-shaped")
    parser.add_argument("--nas-steps", type=int, default=30, help="training steps per NAS proxy trial")
    parser.add_argument("--nas-repeats", type=int, default=3)
    parser.add_argument("--e2e-epochs", type=int, default=100)
    parser.add_argument("--e2e-model", default="convnet-w32")
    parser.add_argument("--e2e-repeats", type=int, default=2)
    parser.add_argument("--data-root", default=None, help="where MNIST is for the e2e rows (default: $DM_DATA_ROOT)")
    parser.add_argument("--baseline-rev", default=None,
                        help="a git revision whose dm_core is 'today' in the e2e rows (e.g. the commit before "
                             "train_many)")
    parser.add_argument("--scaling-k", type=int, default=None, help="networks of the scaling rows (default: 2 x cores)")
    parser.add_argument("--readme", type=Path, nargs="?", const=README, default=None,
                        help="also write the table into this README (default: benchmarks/README.md) between the "
                             "speed.py markers of its device kind (<!-- speed.py cpu --> ... <!-- /speed.py cpu -->, "
                             "or cuda)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args(argv)
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dm_speed_inductor_")
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = args.workers if args.workers == "auto" else int(args.workers)

    device = resolve_device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores")
    loads = [os.getloadavg()[0]]
    run_bf16 = args.bf16 == "always" or (args.bf16 == "auto" and bf16_native(device))
    precisions = ["fp32", "bf16"] if run_bf16 else ["fp32"]
    data = cifar_like(per_class=max(100, args.batch_real), test=1000)
    rows, result = [], {"device": where, "torch": torch.__version__, "model": args.model, "repeats": args.repeats}

    def row(what, variant, seconds, unit, speedup=None, note=""):
        add_row(rows, what, variant, seconds, unit, speedup, note)

    def dm_block():
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

    def dsa_block():
        outer, inner = args.dsa_loops

        def dsa(precision, compile_mode="off"):
            def run(n):
                condense_dsa(data, DSAConfig(ipc=args.ipc, iterations=n, batch_real=args.batch_real, model=args.model,
                                             precision=precision, outer_loop=outer, inner_loop=inner,
                                             compile=compile_mode, log_every=10 ** 9, checkpoint_every=10 ** 9),
                             device=device, progress=False)
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
            block[f"only the drawn op, compiled inner loop, {p}"] = dsa(p, "on")
        print("DSA", file=sys.stderr, flush=True)
        t = Timing(block, 0, 1, device, args.dsa_repeats)
        for name in block:
            base = f"every op computed, {name.rsplit(', ', 1)[1]}"
            row(f"DSA (outer {outer}, inner {inner})", name, t.seconds[name], "s/iteration",
                None if name == base else t.speedup(base, name),
                f"compile {t.extra[name]:.0f} s" if "compiled" in name else "")
        result["dsa"] = {"slopes": t.slopes}

    def train_block():
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

    def bf16_probe():
        """How much slower bf16 is here, from one small training step of each."""
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

    run_block = {"dm": dm_block, "dsa": dsa_block, "train": train_block,
                 "pool": lambda: pool_rows(args, device, rows, result),
                 "many": lambda: many_rows(args, device, workers, rows, result),
                 "nas": lambda: nas_rows(args, device, workers, rows, result),
                 "e2e": lambda: e2e_rows(args, device, rows, result),
                 "scaling": lambda: scaling_rows(args, device, rows, result) if device.type == "cpu" else None}

    def publish(final: bool) -> None:
        """The table and JSON so far (after every block, so a run stopped by a time limit keeps what it did)."""
        result["load_average"] = loads
        result["argv"] = sys.argv[1:] if argv is None else list(argv)
        table = "\n".join([
            f"{where}, torch {torch.__version__}; {args.model}, CIFAR-shaped data, {args.ipc} images/class (the DM, "
            f"DSA and training rows); 1-minute load average {min(loads):.1f} to {max(loads):.1f} during the run; "
            f"times are medians of interleaved repeats ({args.repeats} for DM and training, {args.dsa_repeats} for "
            f"DSA, {args.many_repeats} for many and scaling, {args.nas_repeats} for NAS, {args.e2e_repeats} end to "
            f"end), speed-ups the median of the per-repeat ratios", "",
            "| what | variant | time | unit | speed-up | note |", "|---|---|---|---|---|---|",
            *("| " + " | ".join(r) + " |" for r in rows)])
        if final:
            print("\n" + table)
            print(json.dumps(result))
        if args.json_out is not None:
            args.json_out.write_text(json.dumps(result) + "\n")
        if args.readme is not None:
            splice(args.readme, device.type, table)

    for name in dict.fromkeys(args.only):  # in the order asked
        run_block[name]()
        loads.append(os.getloadavg()[0])
        publish(final=False)
    if not run_bf16 and set(args.only) & {"dm", "dsa", "train"}:
        bf16_probe()
    publish(final=True)
    return 0


def add_row(rows: list, what, variant, seconds, unit, speedup=None, note=""):
    rows.append((what, variant, f"{seconds:.3f}", unit, f"{speedup:.2f}x" if speedup else "baseline", note))


def many_label(workers, k: int, device: torch.device) -> str:
    from dm_core.many import choose_mode, resolve_workers

    mode = choose_mode(k, device, resolve_workers(workers, device))
    return {"processes": "worker processes", "stacked": "stacked", "sequential": "in this process"}[mode]


def processes_left_out(device: torch.device, k: int) -> int | None:
    """The cores, where ``--workers auto`` would not take worker processes for ``k`` jobs on this CPU (so a row of
    the processes it leaves out is worth adding); None elsewhere."""
    cores = available_cores()
    return cores if device.type == "cpu" and cores > 1 and many_label("auto", k, device) != "worker processes" else None


def torch_pooling(net: torch.nn.Module) -> torch.nn.Module:
    """The network as it was before issue 23: torch's nn.AvgPool2d where dm_core now has AvgPool2x2 (same bits)."""
    from dm_core.nets import AvgPool2x2

    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, AvgPool2x2):
                setattr(module, name, torch.nn.AvgPool2d(2, 2))
    return net


def pool_rows(args, device: torch.device, rows: list, result: dict) -> None:
    """One network trained and tested with torch's nn.AvgPool2d against dm_core's AvgPool2x2 (the CPU's pooling)."""
    workloads = [("ConvNet-w32, MNIST-shaped", "convnet-w32", mnist_like(10, 10000), "mnist", 30),
                 ("ConvNet-128, CIFAR-shaped", "convnet", cifar_like(10, 2000), "cifar10", 10)]
    result["pool"] = {}
    base, ours = "torch's nn.AvgPool2d", "AvgPool2x2"
    for label, model, data, dataset, epochs in workloads:
        config = TrainConfig(epochs=epochs, batch_size=256, compile="off").resolve(dataset)
        times, weights = {base: [], ours: []}, {}
        block = {name: pool_run(model, data, config, device, name == ours, times[name], weights, name)
                 for name in (base, ours)}
        print(f"pooling: {label}", file=sys.stderr, flush=True)
        t = WallTiming(block, device, args.repeats, warm=True)
        same = torch.equal(weights[base], weights[ours])
        for name in block:
            pairs = list(zip(times[base][1:], times[ours][1:]))  # the repeats (the first run is the warm-up)
            note = (f"train {statistics.median(a for a, _ in times[name][1:]):.2f} s + test "
                    f"{statistics.median(b for _, b in times[name][1:]):.2f} s")
            if name == ours:
                note += (f"; train {statistics.median(a[0] / b[0] for a, b in pairs):.2f}x, test "
                         f"{statistics.median(a[1] / b[1] for a, b in pairs):.2f}x; weights equal bit for bit: {same}")
            add_row(rows, f"{label}, 10 ipc, {epochs} epochs + {len(data.y_test):,} test images", name,
                    t.seconds[name], "s/run", None if name == base else t.speedup(base, name), note)
        result["pool"][model] = {"seconds": t.slopes, "train_test": times, "bit_equal": same}


def pool_run(model: str, data, config: TrainConfig, device: torch.device, ours: bool, times: list, weights: dict,
             name: str):
    """A run of the pooling rows: build, train, test; records (train s, test s) and the trained weights."""
    def go():
        shape = tuple(data.x_train.shape[1:])
        net = reinit_(build_model(model, shape[0], 10, shape[1:]), make_generator(0, torch.device("cpu")))
        net = net if ours else torch_pooling(net)
        started = time.perf_counter()
        train_model(net, data.x_train, data.y_train, config, seed=0, device=device)
        trained = time.perf_counter()
        evaluate_accuracy(net, data.x_test, data.y_test, device)
        times.append((trained - started, time.perf_counter() - trained))
        weights[name] = torch.cat([p.detach().flatten().cpu() for p in net.parameters()])
    return go


def many_rows(args, device: torch.device, workers, rows: list, result: dict) -> None:
    """K trainings at once against K in sequence (today), per workload and K."""
    cpu = torch.device("cpu")
    if device.type == "cpu":  # start the forkserver now: a command pays it once, the end-to-end rows include it
        train_many([TrainJob("convnet-d1-w4", torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long),
                             TrainConfig(iterations=1), seed=s, num_classes=2) for s in range(2)], device, 2,
                   mode="processes")
    workloads = {"w32": ("ConvNet-w32, MNIST-shaped", "convnet-w32", mnist_like(10, 100), "mnist"),
                 "w128": ("ConvNet-128, CIFAR-shaped", "convnet", cifar_like(10, 100), "cifar10")}
    result["many"] = {}
    for key in args.many_models:
        label, model, data, dataset = workloads[key]
        x, y, shape = data.x_train, data.y_train, tuple(data.x_train.shape[1:])

        def config(n, dataset=dataset):
            return TrainConfig(epochs=n, batch_size=256, compile="off").resolve(dataset)

        warm = reinit_(build_model(model, shape[0], 10, shape[1:]), make_generator(0, cpu))
        train_model(warm, x, y, config(1), seed=0, device=device)  # one-time costs (kernels, allocator) untimed
        for k in args.many_k:
            def sequence(n, k=k, model=model, x=x, y=y, shape=shape):
                for s in range(k):
                    net = reinit_(build_model(model, shape[0], 10, shape[1:]), make_generator(s, cpu))
                    train_model(net, x, y, config(n), seed=s, device=device)

            def at_once(n, k=k, model=model, x=x, y=y, mode="auto", count=workers):
                train_many([TrainJob(model, x, y, config(n), seed=s, num_classes=10) for s in range(k)], device,
                           count, mode=mode)

            epochs = args.many_epochs[0 if key == "w32" else 1]
            base = f"{k} in sequence (today)"
            block = {base: lambda s=sequence, e=epochs: s(e),
                     f"{k} at once, workers {workers} ({many_label(workers, k, device)})":
                         lambda f=at_once, e=epochs: f(e)}
            cores = processes_left_out(device, k) if workers == "auto" and k > 1 else None
            if cores:  # the worker processes auto leaves out on this CPU
                block[f"{k} at once, workers {cores} (worker processes)"] = \
                    lambda f=at_once, e=epochs, c=cores: f(e, count=c)
            if args.many_stacked and device.type == "cpu" and k > 1:
                block[f"{k} at once, stacked (forced)"] = lambda f=at_once, e=epochs: f(e, mode="stacked")
            print(f"many: {label}, K={k}, {epochs} epochs", file=sys.stderr, flush=True)
            t = WallTiming(block, device, args.many_repeats, warm=False)
            for name in block:
                add_row(rows, f"{k} x {label}, 10 ipc, {epochs} epochs", name, t.seconds[name], "s/run",
                        None if name == base else t.speedup(base, name),
                        f"{t.seconds[name] / (k * (epochs + 1)):.3f} s per network-epoch")
            result["many"][f"{key}_k{k}"] = {"seconds": t.slopes, "epochs": epochs, "load": os.getloadavg()[0]}


def nas_rows(args, device: torch.device, workers, rows: list, result: dict) -> None:
    """A NAS proxy search (8 architectures x 2 repeats): one trial after another (today) against train_many."""
    archs, repeats = nas_architectures(8), 2
    proxy = cifar_like(10, 1000, seed=1)
    x, y, xv, yv = proxy.x_train, proxy.y_train, proxy.x_test, proxy.y_test
    config = TrainConfig(iterations=args.nas_steps, batch_size=256, compile="off").resolve("cifar10")
    scores = {}

    def today():
        accuracies = []
        for spec in archs:
            for r in range(repeats):  # nas.trial.train_architecture before issue 23
                net = torch_pooling(build_model(spec, 3, 10, (32, 32)))  # the network as it was
                reinit_(net, torch.Generator().manual_seed(r))
                train_model(net, x, y, config, seed=r, device=device)
                accuracies.append(evaluate_accuracy(net, xv, yv, device=device, batch_size=128))
        scores["today"] = accuracies

    def at_once(count, key):
        def run():
            jobs = [TrainJob(spec, x, y, config, seed=r, tests=((xv, yv),), num_classes=10) for spec in archs
                    for r in range(repeats)]
            scores[key] = [r.accuracies[0] for r in train_many(jobs, device, count)]
        return run

    base = "one trial after another (today)"
    keys = {f"train_many, workers {workers} ({many_label(workers, 16, device)})": "many"}  # row -> its scores
    cores = processes_left_out(device, 16) if workers == "auto" else None
    if cores:
        keys[f"train_many, workers {cores} (worker processes)"] = "processes"
    block = {base: today,
             **{name: at_once(cores if key == "processes" else workers, key) for name, key in keys.items()}}
    print("NAS proxy search", file=sys.stderr, flush=True)
    t = WallTiming(block, device, args.nas_repeats, warm=False)
    drift = {key: max(abs(a - b) for a, b in zip(scores["today"], scores[key])) for key in keys.values()}
    what = f"NAS proxy search (8 archs x 2, {args.nas_steps} steps + 1,000 val)"
    for name in block:
        add_row(rows, what, name, t.seconds[name], "s/search", None if name == base else t.speedup(base, name),
                "" if name == base else f"largest accuracy difference {100 * drift[keys[name]]:.2f} points")
    result["nas"] = {"seconds": t.slopes, "archs": [a.name for a in archs], "max_accuracy_difference": drift,
                     "load": os.getloadavg()[0]}


def baseline_tree(rev: str) -> Path:
    """dm_core as it was at ``rev`` (git archive), in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="dm_today_"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "dm_core"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def e2e_rows(args, device: torch.device, rows: list, result: dict) -> None:
    """``python -m dm_core evaluate --repeats 5`` of a 10-ipc set, whole commands."""
    from dm_core import DMError, load_dataset

    work = Path(tempfile.mkdtemp(prefix="dm_e2e_"))
    root = args.data_root or os.environ.get("DM_DATA_ROOT") or str(ROOT.parent / "shared" / "data")
    try:
        load_dataset("mnist", root, download=False)
        dataset, what_data = "mnist", "MNIST"
    except DMError:  # MNIST-shaped random digits instead (the cost is the same)
        import numpy as np

        rng = np.random.default_rng(0)
        np.savez(work / "mnist_shaped.npz", x_train=rng.integers(0, 255, (6000, 28, 28), dtype=np.uint8),
                 y_train=np.arange(6000) % 10, x_test=rng.integers(0, 255, (10000, 28, 28), dtype=np.uint8),
                 y_test=np.arange(10000) % 10)
        dataset, what_data = f"npz:{work / 'mnist_shaped.npz'}", "MNIST-shaped random images"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "dm_core", "condense", "--dataset", dataset, "--data-root", root, "--method",
                    "random", "--ipc", "10", "--out", "set.pt", "--no-progress"], cwd=work, env=env, check=True,
                   capture_output=True)
    command = [sys.executable, "-m", "dm_core", "evaluate", "set.pt", "--data-root", root, "--repeats", "5",
               "--epochs", str(args.e2e_epochs), "--model", args.e2e_model, "--device", str(device), "--no-progress"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    trees = {"new": ROOT}
    if args.baseline_rev:
        trees["today"] = baseline_tree(args.baseline_rev)
    figures = {}

    def evaluate(tree: str, extra: list[str], name: str):
        def run():
            done = subprocess.run(command + extra, cwd=work, env={**env, "PYTHONPATH": str(trees[tree])},
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"error: {' '.join(command + extra)} failed:\n{done.stderr[-2000:]}")
            figures[name] = json.loads(done.stdout.strip().splitlines()[-1])
        return run

    block = {}
    if "today" in trees:
        block[f"today ({args.baseline_rev})"] = evaluate("today", [], f"today ({args.baseline_rev})")
    block["--workers 1"] = evaluate("new", ["--workers", "1"], "--workers 1")
    block["--workers auto"] = evaluate("new", ["--workers", "auto"], "--workers auto")
    cores = processes_left_out(device, 5)
    if cores:
        block[f"--workers {cores}"] = evaluate("new", ["--workers", str(cores)], f"--workers {cores}")
    base = next(iter(block))
    print("end to end", file=sys.stderr, flush=True)
    t = WallTiming(block, device, args.e2e_repeats, warm=False)
    what = f"evaluate --repeats 5 --epochs {args.e2e_epochs}, {args.e2e_model}, 10 ipc of {what_data}"
    for name in block:
        accuracies = figures[name]["accuracies_percent"]
        note = f"accuracies {', '.join(f'{a:.2f}' for a in accuracies)}"
        add_row(rows, what, name, t.seconds[name], "s/command", None if name == base else t.speedup(base, name),
                note)
    result["e2e"] = {"seconds": t.slopes, "figures": figures, "dataset": what_data, "load": os.getloadavg()[0]}


def scaling_rows(args, device: torch.device, rows: list, result: dict) -> None:
    """How K trainings scale with cores: threads of one process against one-thread worker processes."""
    cores = available_cores()
    counts = [c for c in (1, 2, 4, 8, 16, 32, 64) if c <= cores]
    k = args.scaling_k or 2 * cores
    data = mnist_like(10, 100)
    x, y = data.x_train, data.y_train
    cpu = torch.device("cpu")

    def config(n):
        return TrainConfig(epochs=n, batch_size=256, compile="off").resolve("mnist")

    def sequence(n):
        for s in range(k):
            net = reinit_(build_model("convnet-w32", 1, 10, (28, 28)), make_generator(s, cpu))
            train_model(net, x, y, config(n), seed=s, device=device)

    def at_once(n, w):
        train_many([TrainJob("convnet-w32", x, y, config(n), seed=s, num_classes=10) for s in range(k)], device, w,
                   mode="processes")

    epochs = args.many_epochs[0]
    block = {f"in sequence, {c} thread(s)": (lambda c=c: with_threads(c, sequence)(epochs)) for c in counts}
    block.update({f"{w} workers of 1 thread": (lambda w=w: at_once(epochs, w)) for w in counts if w > 1})
    base = f"in sequence, {counts[0]} thread(s)"
    print(f"scaling: {k} networks, up to {cores} cores", file=sys.stderr, flush=True)
    t = WallTiming(block, device, args.many_repeats, warm=False)
    for name in block:
        add_row(rows, f"scaling: {k} x ConvNet-w32, MNIST-shaped, {epochs} epochs, {cores} cores", name,
                t.seconds[name], "s/run", None if name == base else t.speedup(base, name))
    result["scaling"] = {"seconds": t.slopes, "cores": cores, "networks": k, "epochs": epochs,
                         "load": os.getloadavg()[0]}


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
