"""Command line: train an NCSN on images, or sample a grid from a checkpoint.

    python -m scorelab.ncsn train --out DIR --steps N [--dataset digits|mnist|cifar10] [--ngf G] [--resume]
        [--device cuda] [--amp] [--channels-last] [--compile] [--log-every K]
    torchrun --nproc_per_node=N -m scorelab.ncsn train ...     (one process per GPU, or CPU)
    python -m scorelab.ncsn sample --checkpoint PATH --n 64 --out grid.png

The default dataset, the 8x8 digits, works offline; MNIST and CIFAR-10 are read from
``--data-root`` in the layout torchvision writes, and downloaded there first (torchvision and a
network, as on Colab) when they are missing. The network's channels and image size
follow the data.

``train`` writes ``DIR/checkpoints/step_XXXXXXX.pt`` (every ``--checkpoint-every`` steps and
at the end), optional sample grids ``DIR/samples_step_XXXXXXX.png``, the final (EMA) weights
``DIR/model.pt`` and ``DIR/run.json`` (the command, seed, wall time, number of processes,
SHA-256 of model.pt).

Under ``torchrun`` (the environment variables it sets, ``WORLD_SIZE`` > 1), the processes
train one model with ``DistributedDataParallel`` (the ``nccl`` backend with ``--device cuda``,
each process on the GPU ``LOCAL_RANK``; ``gloo`` on the CPU): ``--batch-size`` is per process,
each takes its slice of every global batch, and rank 0 alone writes files. A resume needs the
same number of processes.

Bad values are refused before any work, as ``error: argument --steps: ...`` (exit status 2);
an error found later (a checkpoint that cannot be used, say) is printed as one ``error: ...``
line (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch


def _integer_at_least(least: int):
    """An argparse type: an integer >= ``least``, else the argparse error that says so."""
    bound = "a positive integer" if least == 1 else f"an integer >= {least}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


_positive_int = _integer_at_least(1)
_count = _integer_at_least(0)  # 0 has each flag's own meaning, see its help
_width = _integer_at_least(2)  # --ngf: each conditional norm needs two channels


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _rate(text: str) -> float:
    """An argparse type for --ema-rate: a number in [0, 1) (0: no EMA)."""
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1) (0: no EMA), got {text}")
    return value


def _device(text: str) -> str:
    """An argparse type: a torch device (cpu, cuda, cuda:1, mps) that this machine has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"must be a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    if device.type == "cpu":
        return text
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    elif device.type == "mps":
        count = 1 if torch.backends.mps.is_available() else 0
    else:
        raise argparse.ArgumentTypeError(f"must be cpu, cuda[:index] or mps, got {text!r}")
    if count == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no {device.type} device")
    if device.index is not None and device.index >= count:
        raise argparse.ArgumentTypeError(
            f"{text!r}: this machine has {count} {device.type} device(s), indices 0..{count - 1}")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scorelab.ncsn", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train an NCSN on the 8x8 digits, MNIST or CIFAR-10")
    train.add_argument("--out", required=True, help="folder for checkpoints, grids, model.pt, run.json")
    train.add_argument("--dataset", choices=sorted(DATASETS), default="digits",
                       help="digits (offline, the default), mnist or cifar10 (read from --data-root; "
                       "downloaded with torchvision when missing)")
    train.add_argument("--data-root", default="data", help="folder of mnist and cifar10 (torchvision's layout)")
    train.add_argument("--steps", type=_positive_int, required=True,
                       help="total optimiser steps (with --resume: including those done)")
    train.add_argument("--batch-size", type=_positive_int, default=128)
    train.add_argument("--ngf", type=_width, default=32,
                       help="base width of CondRefineNetDilated (at least 2)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--lr", type=_positive_float, default=1e-3)
    train.add_argument("--ema-rate", type=_rate, default=0.999, help="0 turns the EMA off")
    train.add_argument("--sigma-max", type=_positive_float, default=1.0)
    train.add_argument("--sigma-min", type=_positive_float, default=0.01)
    train.add_argument("--n-levels", type=_positive_int, default=10)
    train.add_argument("--checkpoint-every", type=_count, default=500,
                       help="steps between checkpoints (0: only at the end)")
    train.add_argument("--sample-every", type=_count, default=0, help="0: no sample grids")
    train.add_argument("--threads", type=_count, default=0,
                       help="torch threads (0: torch's default)")
    train.add_argument("--device", type=_device, default="cpu")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    train.add_argument("--amp", action="store_true",
                       help="mixed precision: bf16 autocast (fp16 with a gradient scaler on GPUs "
                       "without bf16)")
    train.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile the network (slow first steps)")
    train.add_argument("--log-every", type=_positive_int, default=10,
                       help="read and check the loss every K steps (steps never wait for the GPU)")
    train.add_argument("--no-progress", action="store_true")
    sample = commands.add_parser("sample", help="draw a grid of samples from a checkpoint")
    sample.add_argument("--checkpoint", required=True, help="a training checkpoint or a weights file")
    sample.add_argument("--n", type=_positive_int, default=64)
    sample.add_argument("--out", required=True,
                        help="the image to write (.png; any suffix matplotlib writes)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--n-steps-each", type=_positive_int, default=None)
    sample.add_argument("--step-size", type=_positive_float, default=None)
    sample.add_argument("--device", type=_device, default="cpu")
    return parser


def _check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (parser.error) what one flag's type cannot see: paths that would fail only after
    the work is done (an --out that is a file, a missing folder, an unknown image suffix, a
    missing checkpoint) and a ladder whose ends are the wrong way round."""
    out = Path(args.out)
    if args.command == "train":
        if out.exists() and not out.is_dir():
            parser.error(f"argument --out: {args.out!r} is a file; train writes a folder")
        nearest = next(folder for folder in (out.absolute(), *out.absolute().parents)
                       if folder.exists())
        if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
            parser.error(f"argument --out: cannot make or write the folder {args.out!r} "
                         f"({str(nearest)!r} is not a writable folder)")
        if args.sigma_max <= args.sigma_min:
            parser.error(f"argument --sigma-max: must exceed --sigma-min ({args.sigma_min}), "
                         f"got {args.sigma_max}")
        return
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        parser.error(f"argument --out: must name an image file ending in .png (or "
                     f"{', '.join('.' + f for f in sorted(formats) if f != 'png')}), "
                     f"got {args.out!r}")
    if out.is_dir():
        parser.error(f"argument --out: {args.out!r} is a folder; name the image file to write")
    if not out.parent.is_dir():
        parser.error(f"argument --out: the folder {str(out.parent)!r} does not exist")
    if not Path(args.checkpoint).is_file():
        parser.error(f"argument --checkpoint: {args.checkpoint!r} is not a file")


DATASETS = {"digits": "load_digits", "mnist": "load_mnist", "cifar10": "load_cifar10"}


def _training_images(args: argparse.Namespace) -> torch.Tensor:
    """The training images (N, C, H, W) in [0, 1] of ``--dataset``."""
    from scorelab import data

    if args.dataset == "digits":
        return data.load_digits("train")
    return getattr(data, DATASETS[args.dataset])(args.data_root, train=True, download=True)


def _start_processes(device: str) -> tuple[str, int, int]:
    """(device, rank, world size); under torchrun, the process group is started here."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return device, 0, 1
    cuda = torch.device(device).type == "cuda"
    if cuda:  # one GPU per process
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return device, torch.distributed.get_rank(), world_size


def _train(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        images = _training_images(args)
    except RuntimeError as error:  # no torchvision or no network: the message names the alternative
        _parser().error(f"--dataset {args.dataset}: {error} (on this command line: --dataset digits)")
    device, rank, world_size = _start_processes(args.device)
    try:
        _train_model(args, images, device, rank, world_size)
    finally:
        if world_size > 1:
            torch.distributed.destroy_process_group()


def _train_model(args: argparse.Namespace, images: torch.Tensor, device: str, rank: int,
                 world_size: int) -> None:
    from scorelab.ncsn.model import NCSN
    from scorelab.ncsn.training import train_NCSN
    from scorelab.noise import geometric_sigmas

    torch.manual_seed(args.seed)  # the network's initial weights (the same on every rank)
    sigmas = geometric_sigmas(args.sigma_max, args.sigma_min, args.n_levels)
    model = NCSN(channels=images.shape[1], image_size=images.shape[-1], ngf=args.ngf, sigmas=sigmas,
                 device=device)
    start = time.perf_counter()
    losses = train_NCSN(
        model, images, n_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        ema_rate=args.ema_rate or None, seed=args.seed, out_dir=Path(args.out),
        checkpoint_every=args.checkpoint_every or None, sample_every=args.sample_every or None,
        resume=args.resume, progress=not args.no_progress, log_every=args.log_every,
        amp=args.amp, channels_last=args.channels_last, compile=args.compile,
    )
    if rank == 0:  # one writer
        _write_record(args, model, losses, time.perf_counter() - start, world_size)


def _write_record(args: argparse.Namespace, model, losses: list[float], wall: float,
                  world_size: int) -> None:
    """Write DIR/model.pt (the final weights) and DIR/run.json, and print the record."""
    from scorelab.ncsn.checkpoints import save_weights, sha256

    out = Path(args.out)
    weights = save_weights(out / "model.pt", model.cpu())
    launcher = f"torchrun --nproc_per_node={world_size}" if world_size > 1 else "python"
    record = {
        "command": launcher + " -m scorelab.ncsn " + shlex.join(sys.argv[1:]),
        "dataset": args.dataset,
        "seed": args.seed,
        "steps": args.steps,
        "world_size": world_size,
        "device": args.device,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "final_loss_mean_last_100": sum(losses[-100:]) / len(losses[-100:]),
        "wall_time_s_this_invocation": round(wall, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "sha256": sha256(weights),
        "size_bytes": weights.stat().st_size,
    }
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def _sample(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from scorelab.ncsn.checkpoints import load_checkpoint
    from scorelab.plotting import image_samples

    model = load_checkpoint(args.checkpoint, device=args.device)
    figure = image_samples(
        model, n=args.n, generator=torch.Generator().manual_seed(args.seed),
        n_steps_each=args.n_steps_each, step_size=args.step_size,
    )
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    """Run the command line; bad arguments exit with status 2, later errors with status 1."""
    from scorelab.training import TrainingDivergedError

    parser = _parser()
    args = parser.parse_args(argv)
    _check_paths(parser, args)
    try:
        if args.command == "train":
            _train(args)
        else:
            _sample(args)
    except (ValueError, TrainingDivergedError) as error:  # the library's own, clear messages
        message = " ".join(str(error).split())  # one line
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
