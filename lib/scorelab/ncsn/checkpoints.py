"""Checkpoints of NCSN training: atomic writes, exact resume, safe loading, the shipped model.

Every file is a dict of tensors and plain Python types, read back with
``torch.load(..., weights_only=True)``, which refuses pickles that would run code.
Two kinds are written: a *training* checkpoint (``checkpoints/step_XXXXXXX.pt``: model,
optimiser, EMA, step, generator state, data order, losses, and the run's batch size, data
size, data digest, EMA rate, precision and seed) and a *weights* file (config and one state
dict, e.g. the shipped ``pretrained/digits.pt``). Fields added later (``world_size``,
``generator_device``, ``batch_size``, ``data_size``, ``data_digest``, ``ema_rate``,
``precision``, ``seed``) are optional: files written before them still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch

from scorelab.ncsn.model import NCSN

FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
#: What a training checkpoint must hold to resume a run.
TRAINING_FIELDS = ("model", "optimizer", "step", "generator", "data_order", "data_cursor", "losses")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, unsafe, or of another configuration."""


def data_digest(data: torch.Tensor) -> str:
    """The SHA-256 of a data set's values (hex), whatever its device or memory layout.

    A resume compares it with the checkpoint's, so that a run does not continue on other data
    of the same size (its saved data order would index other images). Read once per run.
    """
    values = data.detach().cpu().contiguous()  # the logical (N, C, H, W) order of every layout
    return hashlib.sha256(values.view(-1).view(torch.uint8).numpy()).hexdigest()


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
    world_size: int = 1, batch_size: int | None = None, data_size: int | None = None,
    data_digest: str | None = None, ema_rate: float | None = None, precision: str | None = None,
    seed: int | None = None,
) -> Path:
    """Write the training state at ``step`` to ``out_dir/checkpoints/step_XXXXXXX.pt``.

    Besides the weights and the optimiser: the EMA weights, the gradient scaler's state
    (mixed precision with float16), the generator's state and device, the data order, the
    losses so far, the number of processes (``world_size``) that trained, and the run's
    settings that a resume must repeat (``batch_size`` per process, ``data_size`` images, the
    ``data_digest`` of their values (:func:`data_digest`), ``ema_rate`` and ``precision``, the
    dtype the step computes in: "float32", or "bfloat16" / "float16" under ``amp``, and the
    ``seed``; None: not recorded, or no EMA).
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
            "batch_size": batch_size,
            "data_size": data_size,
            "data_digest": data_digest,
            "ema_rate": ema_rate,
            "precision": precision,
            "seed": seed,
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
    """Write a weights file: the model's config and ``state_dict`` (default: the model's own).

    The state dict must be one of ``model`` (the same names and shapes, finite values, the
    model's noise ladder), else ValueError: the file would not load.
    """
    path = Path(path)
    state_dict = model.state_dict() if state_dict is None else state_dict
    _check_state_dict(model, state_dict)
    _atomic_save(
        {
            "format_version": FORMAT_VERSION,
            "kind": "weights",
            "config": model.config(),
            "model": state_dict,
        },
        path,
    )
    return path


def _check_state_dict(model: NCSN, state_dict) -> None:
    """Raise ValueError unless ``state_dict`` has the names and shapes of ``model.state_dict()``."""
    expected = model.state_dict()
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a dict of the model's tensors (such as "
                         f"model.state_dict()), got {type(state_dict).__name__}")
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise ValueError(f"state_dict must have the model's entries: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    for key, value in expected.items():
        given = state_dict[key]
        if not isinstance(given, torch.Tensor) or given.shape != value.shape:
            got = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
            raise ValueError(f"state_dict[{key!r}] must be a tensor of shape "
                             f"{tuple(value.shape)}, got {got}")
    problem = _weights_problem(state_dict, model.sigmas)
    if problem:
        raise ValueError(f"state_dict {problem}")


def _weights_problem(weights: Mapping, sigmas: torch.Tensor) -> str | None:
    """What is wrong with a state dict's values (non-finite, another ladder), or None."""
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            return f"holds a {type(value).__name__} at {key!r} where a tensor belongs"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return (f"holds non-finite values (NaN or infinity) in {key!r}: the run that "
                    f"wrote it diverged; use an earlier checkpoint")
    ladder = weights.get("sigmas")
    if ladder is not None and (
        ladder.shape != sigmas.shape
        or not torch.allclose(ladder.detach().cpu().double(), sigmas.cpu().double(), rtol=1e-6,
                              atol=0)
    ):
        return (f"has a sigmas buffer {[round(s, 6) for s in ladder.flatten().tolist()]} that "
                f"disagrees with the config's ladder {[round(s, 6) for s in sigmas.tolist()]} "
                f"(the weights belong to another model)")
    return None


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
        The file is missing, truncated or corrupt (or not a checkpoint at all), holds
        objects other than tensors and plain types (a pickle with code in it), or is not a
        scorelab NCSN checkpoint (a dict with its format version, a config and weights).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"checkpoint path must be a str or a path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    _check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip archives raise RuntimeError, EOFError, ...
        raise _unreadable(path, error) from None
    if (not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION
            or not isinstance(state.get("config"), dict)):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a scorelab NCSN checkpoint (format version {FORMAT_VERSION})"
        )
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds no model weights (its 'model' entry is missing or "
            f"not a state dict); use another checkpoint"
        )
    return state


def _check_archive(path: Path) -> None:
    """Raise :class:`CheckpointError` if a member of the zip archive that ``torch.save``
    writes fails its CRC-32 check: a flipped byte inside a tensor would otherwise load as a
    wrong weight without a word. Files that are not zip archives are left to ``torch.load``.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
        raise _unreadable(path, error) from None
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its member {bad!r} fails its CRC check (the "
            "file was changed after it was written); use an earlier checkpoint"
        )


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """The error for a file ``torch.load(weights_only=True)`` could not read.

    The weights-only unpickler raises ``UnpicklingError`` both for a pickle that names an
    unsafe global (code it would run) and for bytes that are no pickle at all; only the
    first mentions an "unsupported global".
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if not line.startswith("Check the doc")),
                  str(error))[:300]
    if isinstance(error, pickle.UnpicklingError) and "unsupported global" in str(error).lower():
        return CheckpointError(
            f"checkpoint {str(path)!r} was refused by torch.load(weights_only=True): it holds "
            f"objects other than tensors and plain types, which could run code ({reason})"
        )
    return CheckpointError(
        f"checkpoint {str(path)!r} is truncated or corrupt, or not a checkpoint at all, and "
        f"cannot be read ({type(error).__name__}: {reason}); use an earlier checkpoint"
    )


def _check_weights(path, weights, sigmas: torch.Tensor, key: str = "model") -> None:
    """Raise :class:`CheckpointError` if the state dict ``weights`` (entry ``key``) is unusable."""
    if not isinstance(weights, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has an entry {key!r} that is not a state dict "
            f"(got {type(weights).__name__})"
        )
    problem = _weights_problem(weights, sigmas)
    if problem:
        raise CheckpointError(f"checkpoint {str(path)!r}: its {key!r} state dict {problem}")


def _check_config(path, expected: dict, found: dict) -> None:
    for key in expected:
        if key not in found or expected[key] != found[key]:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was written for {key}={found.get(key)!r}, "
                f"but the model has {key}={expected[key]!r}"
            )


def load_training_state(path, *, model: NCSN) -> dict:
    """Load a training checkpoint into ``model`` and return the rest of its state.

    Raises :class:`CheckpointError` as :func:`read_training_state` (the model is left
    untouched then).
    """
    state = read_training_state(path, model=model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match its config: {error}") from None
    return state


def read_training_state(path, *, model: NCSN) -> dict:
    """A training checkpoint's state, checked against ``model`` (which is not changed).

    Raises :class:`CheckpointError` when the checkpoint is unreadable, lacks a part of the
    training state (naming it), holds non-finite weights, has a step, losses or data order
    that do not fit together, or was written for another configuration (naming the first
    setting that differs). The losses are returned as a list of floats.
    """
    state = read_checkpoint(path)
    if state.get("kind") != "training":
        raise CheckpointError(f"checkpoint {str(path)!r} holds weights only; it cannot resume training")
    missing = [key for key in TRAINING_FIELDS if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is incomplete: it has no {', '.join(map(repr, missing))} "
            f"(a training checkpoint holds {', '.join(TRAINING_FIELDS)}); use an earlier "
            "checkpoint, or start a new out_dir"
        )
    _check_config(path, model.config(), state["config"])
    _check_weights(path, state["model"], model.sigmas)
    if state.get("ema") is not None:
        _check_weights(path, state["ema"], model.sigmas, key="ema")
    _check_progress(path, state)
    state["losses"] = state["losses"].tolist()
    return state


def _check_progress(path, state: dict) -> None:
    """Raise :class:`CheckpointError` unless the step, losses and data order fit together."""
    step, losses = state["step"], state["losses"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has step {step!r}; expected a positive integer")
    if not isinstance(losses, torch.Tensor) or losses.shape != (step,):
        got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} should hold one loss per step ({step}), got {got}"
        )
    order, cursor = state["data_order"], state["data_cursor"]
    if order is not None and (not isinstance(order, torch.Tensor) or order.ndim != 1
                              or order.is_floating_point()):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has a data order that is not an index tensor")
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0 or (
        order is not None and cursor > len(order)
    ):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has a data cursor {cursor!r} outside its data order")


def check_same_run(path, state: dict, *, world_size: int, generator_device: str,
                   settings: dict | None = None) -> None:
    """Raise :class:`CheckpointError` unless a resume matches the run that wrote ``state``.

    A run resumes exactly only with the same number of processes (each holds a slice of
    every batch) and its generator on the same kind of device (the state of a CPU
    generator means nothing to a CUDA one). Checkpoints older than these fields: 1, "cpu".
    ``settings`` (optional) holds this run's ``batch_size``, ``data_size``, ``data_digest``,
    ``ema_rate`` (None: no EMA), ``precision``, ``seed`` and ``lr``; each must be the
    checkpoint's. The batch size, the data digest, the EMA rate, the precision and the seed are
    compared where the
    checkpoint records them (files written before these fields do not); the data size is read
    from the data order, the learning rate from the optimiser's state and the presence of an
    EMA from the EMA weights.
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
    if settings is not None:
        _check_settings(path, state, settings)


def _written_settings(state: dict) -> dict:
    """The settings of the run that wrote ``state``, as far as the checkpoint tells them."""
    recorded = ("batch_size", "data_size", "data_digest", "precision", "seed")
    written = {key: state[key] for key in recorded if state.get(key) is not None}
    if "data_size" not in written and isinstance(state.get("data_order"), torch.Tensor):
        written["data_size"] = len(state["data_order"])
    optimizer = state.get("optimizer")
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if groups and isinstance(groups[0], dict) and "lr" in groups[0]:
        written["lr"] = groups[0]["lr"]
    return written


def _check_settings(path, state: dict, settings: dict) -> None:
    """Raise :class:`CheckpointError` naming the first of ``settings`` the checkpoint denies."""
    where = f"checkpoint {str(path)!r} was written by a run with"
    advice = "resume with the same value, or start a new out_dir (--out)"
    if "ema_rate" in settings:
        rate, has_ema = settings["ema_rate"], state.get("ema") is not None
        if (rate is not None) != has_ema:
            written = "an EMA of the weights" if has_ema else "no EMA (ema_rate=None)"
            raise CheckpointError(
                f"{where} {written}, but this run has ema_rate={rate!r}: {advice}")
        if rate is not None and state.get("ema_rate") is not None and state["ema_rate"] != rate:
            raise CheckpointError(
                f"{where} ema_rate={state['ema_rate']!r}, but this run has ema_rate={rate!r}: "
                f"{advice}"
            )
    for key, value in _written_settings(state).items():
        if key not in settings or settings[key] == value:
            continue
        if key == "data_digest":
            raise CheckpointError(
                f"{where} other data: the same number of images ({state.get('data_size')}), but "
                f"other values (data digest {value[:12]}..., this run's {settings[key][:12]}...): "
                f"resume with the same data, or start a new out_dir (--out)"
            )
        if key == "precision":  # what train_NCSN's amp (the CLI's --amp) decides
            amp = "amp=False (no --amp)" if value == "float32" else "amp=True (--amp)"
            advice = f"resume with {amp} as before, or start a new out_dir (--out)"
        raise CheckpointError(
            f"{where} {key}={value!r}, but this run has {key}={settings[key]!r}: {advice}")


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

    Raises
    ------
    CheckpointError
        For a file ``read_checkpoint`` refuses, an incomplete or invalid config, weights
        that do not fit the config (other shapes, or a ``sigmas`` buffer other than the
        config's ladder) and non-finite weights, always naming the file.
    """
    state = read_checkpoint(path)
    config = state["config"]
    try:
        model = NCSN(
            channels=config["channels"], image_size=config["image_size"], ngf=config["ngf"],
            sigmas=config["sigmas"],
        )
    except KeyError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} has an incomplete config: "
                              f"it has no {error}") from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} has an invalid config: {error}") from None
    key = "ema" if use_ema and state.get("ema") is not None else "model"
    weights = state[key]
    _check_weights(path, weights, model.sigmas, key=key)
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
