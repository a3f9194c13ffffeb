"""Checkpoints of NCSN training: atomic writes, exact resume, safe loading, the shipped model.

Every file is a dict of tensors and plain Python types, read back with
``torch.load(..., weights_only=True)``, which refuses pickles that would run code.
Two kinds are written: a *training* checkpoint (``checkpoints/step_XXXXXXX.pt``: model,
optimiser, EMA, step, generator state, data order, losses) and a *weights* file (config and
one state dict, e.g. the shipped ``pretrained/digits.pt``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import torch

from scorelab.ncsn.model import NCSN

FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, unsafe, or of another configuration."""


def _atomic_save(obj: dict, path: Path) -> None:
    """Write ``obj`` to ``path`` through a temporary file and ``os.replace``.

    A crash mid-write leaves only the temporary file behind, so ``path`` (and every other
    checkpoint) is either the old complete file or the new complete file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def save_checkpoint(
    out_dir, *, model: NCSN, optimizer, ema: dict | None, step: int, generator: torch.Generator,
    data_order: dict, losses: list[float], keep: int = 3, scaler: dict | None = None,
    world_size: int = 1,
) -> Path:
    """Write the training state at ``step`` to ``out_dir/checkpoints/step_XXXXXXX.pt``.

    Besides the weights and the optimiser: the EMA weights, the gradient scaler's state
    (mixed precision with float16), the generator's state and device, the data order, the
    losses so far, and the number of processes (``world_size``) that trained.
    Keeps the ``keep`` most recent checkpoints and deletes older ones (after the new one
    is safely in place). Returns the path written.
    """
    folder = Path(out_dir) / "checkpoints"
    path = folder / f"step_{step:07d}.pt"
    _atomic_save(
        {
            "format_version": FORMAT_VERSION,
            "kind": "training",
            "config": model.config(),
            "model": model.state_dict(),
            "ema": ema,
            "optimizer": optimizer.state_dict(),
            "step": step,
            "generator": generator.get_state(),
            "generator_device": generator.device.type,
            "scaler": scaler,
            "world_size": int(world_size),
            "data_order": data_order["order"],
            "data_cursor": data_order["cursor"],
            "losses": torch.tensor(losses, dtype=torch.float64),
        },
        path,
    )
    for old in sorted(_step_files(folder))[:-keep]:
        old[1].unlink()
    _remove_stale_temporaries(folder)
    return path


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files that a killed writer (another process) left in ``folder``."""
    for leftover in folder.glob(".step_*.pt.*.tmp"):
        if not leftover.name.endswith(f".{os.getpid()}.tmp"):  # not this process's own write
            leftover.unlink(missing_ok=True)


def save_weights(path, model: NCSN, state_dict: dict | None = None) -> Path:
    """Write a weights file: the model's config and ``state_dict`` (default: the model's own)."""
    path = Path(path)
    _atomic_save(
        {
            "format_version": FORMAT_VERSION,
            "kind": "weights",
            "config": model.config(),
            "model": state_dict if state_dict is not None else model.state_dict(),
        },
        path,
    )
    return path


def _step_files(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    return [(int(m.group(1)), folder / name) for name in os.listdir(folder) if (m := _STEP_FILE.match(name))]


def latest_checkpoint(out_dir) -> Path | None:
    """The training checkpoint of ``out_dir`` with the largest step, or None if there is none."""
    files = _step_files(Path(out_dir) / "checkpoints")
    return max(files)[1] if files else None


def read_checkpoint(path) -> dict:
    """Load a checkpoint file safely (``weights_only=True``) and check its format.

    Raises
    ------
    CheckpointError
        The file is missing, truncated or corrupt, holds objects other than tensors and
        plain types (a pickle with code in it), or is not a scorelab NCSN checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused by torch.load(weights_only=True): it holds "
            f"objects other than tensors and plain types, which could run code ({error})"
        ) from None
    except Exception as error:  # truncated zip archives raise RuntimeError, EOFError, ...
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read "
            f"({type(error).__name__}: {error}); use an earlier checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION or "config" not in state:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a scorelab NCSN checkpoint (format version {FORMAT_VERSION})"
        )
    return state


def _check_config(path, expected: dict, found: dict) -> None:
    for key in expected:
        if key not in found or expected[key] != found[key]:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was written for {key}={found.get(key)!r}, "
                f"but the model has {key}={expected[key]!r}"
            )


def load_training_state(path, *, model: NCSN) -> dict:
    """Load a training checkpoint into ``model`` and return the rest of its state.

    Raises :class:`CheckpointError` when the checkpoint is unreadable or was written for
    another configuration (naming the first setting that differs).
    """
    state = read_checkpoint(path)
    if state.get("kind") != "training":
        raise CheckpointError(f"checkpoint {str(path)!r} holds weights only; it cannot resume training")
    _check_config(path, model.config(), state["config"])
    model.load_state_dict(state["model"])
    state["losses"] = state["losses"].tolist()
    return state


def check_same_run(path, state: dict, *, world_size: int, generator_device: str) -> None:
    """Raise :class:`CheckpointError` unless a resume matches the run that wrote ``state``.

    A run resumes exactly only with the same number of processes (each holds a slice of
    every batch) and its generator on the same kind of device (the state of a CPU
    generator means nothing to a CUDA one). Checkpoints older than these fields: 1, "cpu".
    """
    written = int(state.get("world_size", 1))
    if written != world_size:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by a run on {written} process(es), but this "
            f"run has {world_size}: resume with the same number (torchrun --nproc_per_node="
            f"{written}, or no torchrun for 1), or start a new --out folder"
        )
    device = state.get("generator_device", "cpu")
    if device != generator_device:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by a run on {device}, but this run trains on "
            f"{generator_device}: resume on the same device (--device), or start a new --out folder"
        )


def load_checkpoint(path, *, device: str | torch.device = "cpu", use_ema: bool = True) -> NCSN:
    """An NCSN built from any checkpoint ``train_NCSN`` or ``save_weights`` wrote.

    Parameters
    ----------
    path : path
        A training checkpoint or a weights file.
    device : str or torch.device
        Where to put the model.
    use_ema : bool
        Take the EMA weights of a training checkpoint when it has them.

    Returns
    -------
    NCSN
        In eval mode.
    """
    state = read_checkpoint(path)
    config = state["config"]
    try:
        model = NCSN(
            channels=config["channels"], image_size=config["image_size"], ngf=config["ngf"],
            sigmas=config["sigmas"],
        )
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} has an incomplete config: {error}") from None
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match its config: {error}") from None
    return model.to(device).eval()


def sha256(path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained_info(name: str = "digits") -> dict:
    """The provenance record shipped beside a pretrained model (``pretrained/NAME.json``)."""
    path = PRETRAINED_DIR / f"{name}.json"
    if not path.is_file():
        available = sorted(p.stem for p in PRETRAINED_DIR.glob("*.json"))
        raise ValueError(f"name must be one of the shipped models {available}, got {name!r}")
    return json.loads(path.read_text())


def load_pretrained(name: str = "digits", *, device: str | torch.device = "cpu") -> NCSN:
    """The NCSN shipped with the package, its SHA-256 verified, with its tuned sampling settings.

    ``load_pretrained("digits")`` is a CondRefineNetDilated trained on the 8x8 digits by the
    command recorded in ``pretrained/digits.json`` (see ``pretrained/README.md``).
    """
    info = pretrained_info(name)
    path = PRETRAINED_DIR / f"{name}.pt"
    if sha256(path) != info["sha256"]:
        raise CheckpointError(
            f"pretrained model {str(path)!r} does not have the SHA-256 recorded in {name}.json; "
            "the file is damaged or was replaced (reinstall the package)"
        )
    model = load_checkpoint(path, device=device)
    model.step_size = float(info["sampling"]["step_size"])
    model.n_steps_each = int(info["sampling"]["n_steps_each"])
    return model
