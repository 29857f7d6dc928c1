"""``python -m dm_core condense|evaluate ...``: argparse -> a frozen request -> one library call -> one JSON line.

Progress goes to stderr; the last stdout line is a JSON object with the figures. Any DMError becomes
``error: <message>`` on stderr and exit status 2, and no output file is touched.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .data import DATASETS, load_dataset
from .device import resolve_device
from .distributed import gather_objects, init_from_env, leave_group, local_device, rank_checkpoint, world
from .errors import DMError
from .io import check_writable
from .augment import GROUP_MODES
from .condense import Interrupted
from .compile import COMPILE_MODES
from .methods import COMPILED_METHODS, CONDENSERS, METHODS, check_options, make_set
from .precision import PRECISIONS
from .signals import Terminated, sigterm_as_interrupt
from .synset import SyntheticSet
from .train import TrainConfig, evaluate_set


@dataclass(frozen=True)
class CondenseRequest:
    dataset: str
    method: str
    ipc: int
    iterations: int | None
    lr_img: float | None
    batch_real: int | None
    model: str | None
    herding_epochs: int | None
    class_chunk: int | None
    precision: str
    compile: str | None
    options: tuple[tuple[str, object], ...]
    seed: int
    device: str
    out: Path
    data_root: str | None
    checkpoint: Path | None
    resume: bool
    restart: bool
    png: bool
    progress: bool


@dataclass(frozen=True)
class EvaluateRequest:
    file: Path
    dataset: str | None
    model: str
    epochs: int
    models: int
    precision: str
    augment_groups: str
    compile: str
    seed: int
    device: str
    data_root: str | None
    progress: bool


def condense_options(req: CondenseRequest) -> dict:
    """The method's options from the flags, refusing flags that do not apply to the method."""
    if req.method not in METHODS:
        raise DMError(f"unknown method {req.method!r}: choose one of {', '.join(METHODS)}")
    options = {"model": req.model}
    if req.method in CONDENSERS:
        options.update(iterations=req.iterations, lr_img=req.lr_img, batch_real=req.batch_real)
    elif req.iterations is not None or req.lr_img is not None or req.batch_real is not None:
        raise DMError(f"--iterations, --lr-img and --batch-real apply to {', '.join(CONDENSERS)}, not {req.method}")
    if req.class_chunk is not None:
        chunked = [m for m, config in CONDENSERS.items() if "class_chunk" in config.__dataclass_fields__]
        if req.method not in chunked:
            raise DMError(f"--class-chunk applies to {', '.join(chunked)}, not {req.method}")
        options["class_chunk"] = req.class_chunk
    if req.herding_epochs is not None:
        if req.method != "herding":
            raise DMError(f"--herding-epochs applies to herding, not {req.method}")
        options["epochs"] = req.herding_epochs
    if req.method == "random":
        if req.model is not None:
            raise DMError("--model applies to dm, dsa and herding, not random")
        options = {}
    if req.method != "random":
        options["precision"] = req.precision
    elif req.precision != "fp32":
        raise DMError("--precision applies to dm, dsa and herding, not random")
    if req.compile is not None:
        if req.method not in COMPILED_METHODS:
            raise DMError(f"--compile applies to {', '.join(COMPILED_METHODS)}, not {req.method}")
        options["compile"] = req.compile
    if req.method not in CONDENSERS and (req.checkpoint is not None or req.resume or req.restart):
        raise DMError(f"--checkpoint, --resume and --restart apply to {', '.join(CONDENSERS)}; {req.method} keeps no "
                      f"checkpoint")
    if req.resume and req.restart:
        raise DMError("--resume and --restart contradict each other: give one")
    for key, value in req.options:
        if key in ("ipc", "seed"):
            raise DMError(f"--option {key}= is not an option: use --{key}")
        if key in options and options[key] is not None:
            raise DMError(f"--option {key}= repeats a value a flag already sets: give it once")
        options[key] = value
    check_options(req.method, req.ipc, req.seed, **options)
    return options


def output_paths(req: CondenseRequest) -> tuple[Path | None, Path | None]:
    """(checkpoint, png) beside ``--out``, all checked before any work: no path may stand for another, and each must
    be writable, so nothing is lost or found unwritable after a long run."""
    out = req.out
    if out.suffix == ".ckpt":
        raise DMError(f"--out {out}: .ckpt names are for checkpoints; give the set a .pt name")
    checkpoint = None
    if req.method in CONDENSERS:
        checkpoint = req.checkpoint or out.with_suffix(".ckpt")
        if _same_path(checkpoint, out):
            raise DMError(f"--checkpoint {checkpoint} is the --out file: give the checkpoint another name")
        check_writable(checkpoint, "checkpoint")
    png = out.with_suffix(".png") if req.png else None
    if png is not None and _same_path(png, out):
        raise DMError(f"--png would write the picture over the set {out}: give --out a .pt name")
    if png is not None and checkpoint is not None and _same_path(png, checkpoint):
        raise DMError(f"--png would write the picture over the checkpoint {checkpoint}: choose another --checkpoint")
    check_writable(out, "--out")
    if png is not None:
        check_writable(png, "picture")
    return checkpoint, png


def _same_path(a: Path, b: Path) -> bool:
    return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def condense(req: CondenseRequest) -> dict | None:
    """Make the set; under torchrun rank 0 writes it and the others return None."""
    options = condense_options(req)
    checkpoint, png = output_paths(req)
    device = local_device(resolve_device(req.device))
    w = init_from_env(device)
    data = load_dataset(req.dataset, req.data_root)
    synset = make_set(req.method, data, req.ipc, seed=req.seed, device=device, progress=req.progress,
                      checkpoint=checkpoint, resume=not req.restart, **options)
    figures = None
    if w.is_main:
        synset.save(req.out)
        figures = {"file": str(req.out), "dataset": data.name, "method": req.method, "ipc": req.ipc,
                   "images": len(synset), "precision": synset.meta.get("precision"),
                   "seconds": synset.meta.get("seconds"), **({"world_size": w.size} if w.sharded else {})}
        if png is not None:
            figures["png"] = str(synset.save_grid_png(png))
        if synset.meta.get("loss_history"):
            figures["final_loss"] = synset.meta["loss_history"][-1][1]
    gather_objects(None)  # every rank waits until the set is written before its checkpoint goes
    mine = rank_checkpoint(checkpoint, w)
    if mine is not None and mine.exists() and not _same_path(mine, req.out):
        mine.unlink()  # the finished set supersedes its checkpoint
    return figures


def evaluate(req: EvaluateRequest) -> dict:
    synset = SyntheticSet.load(req.file)
    dataset = req.dataset or synset.meta.get("dataset")
    if not dataset:
        raise DMError(f"{req.file} does not say which dataset it was made from: pass --dataset")
    device = local_device(resolve_device(req.device))
    w = init_from_env(device)
    data = load_dataset(dataset, req.data_root)
    config = TrainConfig(epochs=req.epochs, precision=req.precision, augment_groups=req.augment_groups,
                         compile=req.compile)
    result = evaluate_set(synset, data, req.model, req.models, config, req.seed, device, req.progress)
    return {"file": str(req.file), "dataset": data.name, "method": synset.meta.get("method"),
            "ipc": synset.meta.get("ipc"), "model": req.model, "epochs": req.epochs, "models": req.models,
            "precision": req.precision, "augment_groups": req.augment_groups, "compile": req.compile,
            "mean": round(result.mean, 3), "std": round(result.std, 3),
            "accuracies": [round(a, 3) for a in result.accuracies], "seconds": round(result.seconds, 3),
            **({"world_size": w.size} if w.sharded else {})} if w.is_main else None


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE, VALUE read as a Python literal when it is one (64, 0.5, None, 'x'), else kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. checkpoint_every=100), got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dm_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("condense", help="make a small set (any of --method's) and save it as a .pt file")
    c.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    c.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    c.add_argument("--ipc", type=_positive, required=True, help="images per class")
    c.add_argument("--iterations", type=_positive, help="DM and its successors: 20000, DSA: 1000 by default")
    c.add_argument("--lr-img", type=float,
                   help="image learning rate (DM, M3D, DataDAM, DDM: 1, or 10 from 100 ipc; IDM: 0.2; DSA: 0.1)")
    c.add_argument("--batch-real", type=_positive, help="real images per class per iteration (256; DataDAM: 64)")
    c.add_argument("--model", help="network name, e.g. convnet, convnetbn, convnet-d4 (default convnet)")
    c.add_argument("--class-chunk", type=_positive,
                   help="dm and its successors: classes per forward pass (default: all; halved when memory runs out)")
    c.add_argument("--herding-epochs", type=_positive, help="herding: epochs of the feature network (default 30)")
    c.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (the reference's) or bf16 autocast (faster on recent hardware; not the reported default)")
    c.add_argument("--compile", choices=COMPILE_MODES,
                   help="dm and herding: torch.compile the network (auto: where it pays, the default; on; off)")
    c.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="any field of the method's configuration, e.g. init=noise, checkpoint_every=100, "
                        "outer_loop=5 (repeatable)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    c.add_argument("--out", type=Path, help="output file (default: <dataset>_<method>_ipc<K>.pt)")
    c.add_argument("--data-root", help="folder holding the datasets (else $DM_DATA_ROOT, else ./data)")
    c.add_argument("--checkpoint", type=Path, help="checkpoint of a condensation (default: the output path with .ckpt)")
    c.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint (the default whenever a matching checkpoint exists)")
    c.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    c.add_argument("--png", action="store_true", help="also write an image grid PNG beside the output")
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="train fresh networks on a set file and test them on the real test set")
    e.add_argument("file", type=Path)
    e.add_argument("--dataset", help="dataset to test on (default: the one recorded in the file)")
    e.add_argument("--model", default="convnet")
    e.add_argument("--epochs", type=_positive, default=1000)
    e.add_argument("--models", type=_positive, default=5, help="networks to train (paper: 20)")
    e.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (reference) or bf16 autocast")
    e.add_argument("--augment-groups", choices=GROUP_MODES, default="batch",
                   help="training augmentation: one op group per mini-batch (reference) or one per sample")
    e.add_argument("--compile", choices=COMPILE_MODES, default="auto",
                   help="torch.compile the training (auto: where the epochs pay for the compile time; on; off)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--data-root")
    e.add_argument("--quiet", action="store_true")
    return parser


def condense_request(args: argparse.Namespace) -> CondenseRequest:
    out = args.out or Path(f"{args.dataset.replace(':', '_').replace('/', '_')}_{args.method}_ipc{args.ipc}.pt")
    return CondenseRequest(args.dataset, args.method, args.ipc, args.iterations, args.lr_img, args.batch_real,
                           args.model, args.herding_epochs, args.class_chunk, args.precision, args.compile,
                           tuple(args.option),
                           args.seed, args.device,
                           out, args.data_root, args.checkpoint, args.resume, args.restart, args.png,
                           not args.quiet)


def interrupted_message(req) -> str:
    """What a hard stop (a second Ctrl-C, or one before the loop) leaves behind."""
    if isinstance(req, CondenseRequest) and req.method in CONDENSERS:
        checkpoint = req.checkpoint or req.out.with_suffix(".ckpt")
        if checkpoint.is_file():
            return f"interrupted; the last checkpoint {checkpoint} holds the run: rerun the same command to continue"
    return "interrupted; nothing was saved: rerun the command to start again"


def terminated_message(req, w) -> str:
    """What a SIGTERM leaves behind: the last periodic checkpoint(s), never a set file."""
    if isinstance(req, CondenseRequest) and req.method in CONDENSERS:
        checkpoint = rank_checkpoint(req.checkpoint or req.out.with_suffix(".ckpt"), w)
        held = None
        if w.sharded:
            pattern = checkpoint.with_name(checkpoint.name.replace(f".rank{w.rank}-of-", ".rank*-of-"))
            held = f"the per-rank checkpoints {pattern} hold"
        elif checkpoint.is_file():
            held = f"the last checkpoint {checkpoint} holds"
        if held is not None:
            return f"no set was written; {held} the run: rerun the same command to continue"
    return "nothing was written: rerun the command to start again"


def _fresh_line(args: argparse.Namespace) -> str:
    """A progress bar leaves the cursor at the end of its line: start the last message on a line of its own."""
    return "" if args.quiet else "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with sigterm_as_interrupt():
        status = run(args)
    leave_group(graceful=status == 0)
    return status


def run(args: argparse.Namespace) -> int:
    """The command, its one JSON line or its one error line; the exit status."""
    started = time.perf_counter()
    req = None
    try:
        if args.command == "condense":
            req = condense_request(args)
            figures = condense(req)
        else:
            req = EvaluateRequest(args.file, args.dataset, args.model, args.epochs, args.models, args.precision,
                                  args.augment_groups, args.compile, args.seed, args.device, args.data_root, not args.quiet)
            figures = evaluate(req)
    except DMError as exc:
        if world().is_main:  # under torchrun, one line from rank 0 (the other ranks meet the same error)
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        where = (f"checkpoint saved to {stop.checkpoint}: rerun the same command to continue" if stop.checkpoint
                 else "nothing was saved: rerun the command to start again")
        print(f"{_fresh_line(args)}interrupted at iteration {stop.iteration} of {stop.iterations}; {where}",
              file=sys.stderr)
        return 130
    except Terminated:
        w = world()
        if w.is_main:
            why = ("torchrun stops every process when one of them fails; see its report below" if w.sharded
                   else "the job was cancelled")
            print(f"{_fresh_line(args)}error: stopped by SIGTERM ({why}); {terminated_message(req, w)}",
                  file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{_fresh_line(args)}{interrupted_message(req)}", file=sys.stderr)
        return 130
    if figures is None:  # a rank other than 0: rank 0 reports
        return 0
    figures["wall_seconds"] = round(time.perf_counter() - started, 3)
    print(json.dumps(figures))
    return 0
