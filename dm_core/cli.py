"""``python -m dm_core`` (console script ``dm-core``): make a small set, evaluate one, list methods and networks."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from . import shell
from .augment import GROUP_MODES
from .data import DATASETS, holdout, load_dataset
from .device import resolve_device
from .distributed import gather_objects, init_from_env, local_device, rank_checkpoint, world
from .engine import Interrupted, discard_checkpoint
from .errors import DMError
from .io import check_writable, work_lock
from .many import prepare_workers
from .nets import default_model, list_models
from .precision import PRECISIONS
from .registry import get_method, list_methods, methods_supporting
from .signals import Terminated
from .synset import SyntheticSet
from .train import TrainConfig, evaluate_set

# Options that have a flag of their own (the rest go through --option KEY=VALUE).
FLAGS = {"iterations": "--iterations", "lr_img": "--lr-img", "batch_real": "--batch-real", "model": "--model",
         "class_chunk": "--class-chunk", "precision": "--precision", "compile": "--compile", "augment": "--augment"}
OLD_FLAGS = ("--quiet", "--models", "--resume", "--herding-epochs")


def method_options(args: argparse.Namespace) -> dict:
    """The method's options from the flags; a flag the method has no option for is refused."""
    info = get_method(args.method)
    options = {}
    for name, flag in FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if not info.supports(name):
            raise DMError(f"{flag} applies to {', '.join(methods_supporting(name))}, not {args.method}")
        options[name] = value
    for key, value in args.option:
        if key in ("ipc", "seed"):
            raise DMError(f"--option {key}= is not an option: use --{key}")
        if key in options:
            raise DMError(f"--option {key}= repeats a value {FLAGS[key]} already sets: give it once")
        options[key] = value
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise DMError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if not info.learns and (args.checkpoint is not None or args.restart):
        raise DMError(f"--checkpoint and --restart apply to {', '.join(list_methods(learns=True))}; {args.method} "
                      f"selects real images and keeps no checkpoint")
    info.configure(args.ipc, args.seed, **options)  # every value checked before any work
    return options


def output_paths(args: argparse.Namespace) -> tuple[Path, Path | None, Path | None]:
    """(set, checkpoint, picture), checked before any work: no path may stand for another, and each must be
    writable, so nothing is lost or found unwritable after a long run."""
    out = args.out or Path(f"{args.dataset.replace(':', '_').replace('/', '_')}_{args.method}_ipc{args.ipc}.pt")
    if out.suffix == ".ckpt":
        raise DMError(f"--out {out}: .ckpt names are for checkpoints; give the set a .pt name")
    checkpoint = None
    if get_method(args.method).learns:
        checkpoint = args.checkpoint or out.with_suffix(".ckpt")
        if _same_path(checkpoint, out):
            raise DMError(f"--checkpoint {checkpoint} is the --out file: give the checkpoint another name")
        check_writable(checkpoint, "checkpoint")
    png = out.with_suffix(".png") if args.png else None
    if png is not None and _same_path(png, out):
        raise DMError(f"--png would write the picture over the set {out}: give --out a .pt name")
    if png is not None and checkpoint is not None and _same_path(png, checkpoint):
        raise DMError(f"--png would write the picture over the checkpoint {checkpoint}: choose another --checkpoint")
    check_writable(out, "--out")
    if png is not None:
        check_writable(png, "picture")
    return out, checkpoint, png


def _same_path(a: Path, b: Path) -> bool:
    return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def condense(args: argparse.Namespace) -> dict | None:
    """Make the set; under torchrun rank 0 writes it and the others return None."""
    started = time.perf_counter()
    options = method_options(args)
    out, checkpoint, png = output_paths(args)
    device = local_device(resolve_device(args.device))
    w = init_from_env(device)
    with work_lock(rank_checkpoint(out.with_name(f".{out.name}.lock"), w), str(out)):
        return _condense(args, options, out, checkpoint, png, device, w, started)


def _condense(args, options, out, checkpoint, png, device, w, started) -> dict | None:
    data = load_dataset(args.dataset, args.data_root)
    if args.val_fraction is not None:  # condense from the training part of a NAS search's split only
        data = holdout(data, args.val_fraction, args.split_seed)[0]
    info = get_method(args.method)
    state = {"checkpoint": checkpoint, "resume": not args.restart} if info.learns else {}
    from .methods import make_set

    synset = make_set(args.method, data, args.ipc, seed=args.seed, device=device, progress=args.progress, **state,
                      **options)
    figures = None
    if w.is_main:
        synset.save(out, png)  # the set and its picture, both or neither
        figures = {"file": str(out), "dataset": data.name, "method": args.method, "ipc": args.ipc,
                   "images": len(synset), "precision": synset.meta.get("precision"),
                   "seconds": synset.meta.get("seconds"), **({"png": str(png)} if png else {}),
                   **({"world_size": w.size} if w.sharded else {})}
        if synset.meta.get("loss_history"):
            figures["final_loss"] = synset.meta["loss_history"][-1][1]
        figures["wall_seconds"] = round(time.perf_counter() - started, 3)
    gather_objects(None)  # every rank waits until the set is written before its checkpoint goes
    if checkpoint is not None and not _same_path(rank_checkpoint(checkpoint, w), out):
        discard_checkpoint(checkpoint)  # the finished set supersedes its checkpoint
    return figures


def evaluate(args: argparse.Namespace) -> dict | None:
    started = time.perf_counter()
    synset = SyntheticSet.load(args.file)
    recorded = synset.meta.get("dataset")
    dataset = args.dataset or recorded
    if not dataset:
        raise DMError(f"{args.file} does not say which dataset it was made from: give --dataset")
    config = TrainConfig(epochs=args.epochs, precision=args.precision, augment=args.augment,
                         augment_groups=args.augment_groups, compile=args.compile)
    device = local_device(resolve_device(args.device))
    w = init_from_env(device)
    prepare_workers(args.repeats, device, args.workers)
    data = load_dataset(dataset, args.data_root)
    if recorded and data.name != recorded:
        raise DMError(f"{args.file} was made from {recorded}, not {data.name}: evaluate it on {recorded} (drop "
                      f"--dataset), or make a set from {data.name}")
    config = config.resolve(data.name)
    model = args.model or default_model(data.image_size)
    result = evaluate_set(synset, data, model, args.repeats, config, args.seed, device, args.progress, args.workers)
    if not w.is_main:
        return None
    return {"file": str(args.file), "dataset": data.name, "method": synset.meta.get("method"),
            "ipc": synset.meta.get("ipc"), "model": model, "epochs": args.epochs, "repeats": args.repeats,
            "precision": args.precision, "augment": config.augment, "augment_groups": args.augment_groups,
            "compile": args.compile, "workers": args.workers,
            **result.as_dict(), "wall_seconds": round(time.perf_counter() - started, 3),
            **({"world_size": w.size} if w.sharded else {})}


def describe_methods(args: argparse.Namespace) -> dict:
    return {"methods": [{"name": name, "summary": get_method(name).summary, "learns": get_method(name).learns,
                         "options": {k: v for k, v in get_method(name).defaults().items()}}
                        for name in list_methods()]}


def describe_models(args: argparse.Namespace) -> dict:
    return {"models": list_models()}


def kept(args: argparse.Namespace, exc: BaseException) -> str:
    """What a stopped command leaves behind, and how to go on."""
    if args.command != "condense" or not get_method(args.method).learns:
        return "nothing was saved: rerun the command to start again"
    out = args.out or Path(f"{args.dataset.replace(':', '_').replace('/', '_')}_{args.method}_ipc{args.ipc}.pt")
    checkpoint = rank_checkpoint(args.checkpoint or out.with_suffix(".ckpt"), world())
    if isinstance(exc, Interrupted) and exc.checkpoint is not None:
        return (f"at iteration {exc.iteration} of {exc.iterations}; the checkpoint {exc.checkpoint} holds the run: "
                f"rerun the same command to continue")
    if world().sharded:
        pattern = checkpoint.with_name(checkpoint.name.replace(f".rank{world().rank}-of-", ".rank*-of-"))
        why = "torchrun stops every process when one of them fails; " if isinstance(exc, Terminated) else ""
        return f"{why}no set was written; the per-rank checkpoints {pattern} hold the run: rerun the same command"
    if checkpoint.is_file():
        return f"no set was written; the last checkpoint {checkpoint} holds the run: rerun the same command to continue"
    return "nothing was saved: rerun the command to start again"


def build_parser() -> argparse.ArgumentParser:
    p = shell.parser("python -m dm_core", "Condense a dataset into a few images per class, evaluate such a set by "
                     "training networks from scratch on it, or list the methods and networks.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    methods = ", ".join(list_methods())

    c = sub.add_parser("condense", help="make a small set with any method and save it as a .pt file",
                       description="Make a set of IPC images per class with METHOD and save it (images, labels and "
                                   "provenance) as a .pt file. Rerunning an interrupted command continues it.",
                       formatter_class=shell.HelpFormatter)
    c.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    c.add_argument("--data-root", help="folder of the datasets (default: $DM_DATA_ROOT, else ./data)")
    c.add_argument("--method", required=True, help=f"one of {methods}")
    c.add_argument("--ipc", type=shell.positive_int, required=True, help="images per class")
    c.add_argument("--iterations", type=shell.positive_int,
                   help="optimisation iterations (methods that learn images; default: the method's)")
    c.add_argument("--lr-img", type=float, help="learning rate of the images (default: the method's)")
    c.add_argument("--batch-real", type=shell.positive_int, help="real images per class per iteration")
    c.add_argument("--model", help="the network: a name from 'python -m dm_core models' (default: convnet)")
    c.add_argument("--class-chunk", type=shell.positive_int,
                   help="classes per forward pass, to bound memory (default: as many as fit)")
    c.add_argument("--augment", metavar="STRATEGY",
                   help="augmentation ops joined by '_' (e.g. color_crop_cutout_scale_rotate) or none (default: the "
                        "dataset's)")
    c.add_argument("--precision", choices=PRECISIONS, help="fp32 (the reference's, the default) or bf16 autocast")
    c.add_argument("--compile", choices=("auto", "on", "off"),
                   help="torch.compile the network: auto (only where the work ahead pays for it), on, off")
    c.add_argument("--option", type=shell.option, action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the method (see 'python -m dm_core methods'), e.g. init=noise, "
                        "checkpoint_every=100; repeatable")
    c.add_argument("--val-fraction", type=float,
                   help="hold this fraction of the training images out (as nas.search does) and condense from the rest "
                        "only; the set records the split (default: every training image)")
    c.add_argument("--split-seed", type=shell.seed, default=0, help="seed of the held-out split (with --val-fraction)")
    c.add_argument("--out", type=Path, help="the set file (default: DATASET_METHOD_ipcIPC.pt)")
    c.add_argument("--checkpoint", type=Path, help="checkpoint file of the run (default: --out with .ckpt)")
    c.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    c.add_argument("--png", action="store_true", help="also write a picture of the set beside --out")
    shell.add_common(c, seed_help="seed of every random draw")

    e = sub.add_parser("evaluate", help="train fresh networks on a set file and test them on the real test set",
                       description="Train REPEATS networks from scratch on the set in FILE (each from its own seed) "
                                   "and test them on the real test images; prints their accuracies in percent.",
                       formatter_class=shell.HelpFormatter)
    e.add_argument("file", type=Path, metavar="FILE", help="a set file written by condense")
    e.add_argument("--dataset", help="the dataset to test on (default: the one the set was made from)")
    e.add_argument("--data-root", help="folder of the datasets (default: $DM_DATA_ROOT, else ./data)")
    e.add_argument("--model", help="the network to train (default: the ConvNet of the image size, as the set's "
                                   "condensation used by default)")
    e.add_argument("--epochs", type=shell.positive_int, default=1000)
    e.add_argument("--repeats", type=shell.positive_int, default=5, help="networks to train (the paper: 20)")
    e.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (the reference's) or bf16 autocast")
    e.add_argument("--augment", metavar="STRATEGY",
                   help="training augmentation: ops joined by '_' (e.g. color_crop_cutout_scale_rotate) or none "
                        "(default: the dataset's)")
    e.add_argument("--augment-groups", choices=GROUP_MODES, default="batch",
                   help="training augmentation: one op group per mini-batch (the reference's) or one per image")
    shell.add_common(e, seed_help="seed of the first network (network i uses seed + i)", compile=True, workers=True)

    m = sub.add_parser("methods", help="list the methods and their options (JSON)")
    m.set_defaults(progress=False)
    n = sub.add_parser("models", help="list the network names (JSON)")
    n.set_defaults(progress=False)
    return p


COMMANDS = {"condense": condense, "evaluate": evaluate, "methods": describe_methods, "models": describe_models}


def main(argv: list[str] | None = None) -> int:
    return shell.run_command(build_parser(), lambda args: COMMANDS[args.command](args), kept, argv, OLD_FLAGS)


console = shell.console_entry(main)
