"""Training an NCSN: the annealed DSM trainer of :mod:`scorelab.training` with checkpoints.

:func:`train_NCSN` is the package's one training loop (:meth:`ScoreMatchingTrainer.run`)
run with :class:`~scorelab.training.AnnealedDenoisingScoreMatching` on images, plus the hooks
a long run needs: an EMA of the weights, checkpoints that resume bit for bit, sample grids.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from scorelab._validation import check_positive_int, check_unit_interval
from scorelab.seeding import check_seed
from scorelab.ncsn import checkpoints
from scorelab.ncsn.model import NCSN
from scorelab.training import AnnealedDenoisingScoreMatching, Batches


def train_NCSN(
    model: NCSN, data: torch.Tensor, *, n_steps: int, batch_size: int = 128, lr: float = 1e-3,
    ema_rate: float | None = 0.999, seed: int = 0, out_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None, sample_every: int | None = None, n_samples: int = 64,
    resume: bool = False, progress: bool = True,
    callback: Callable[[int, float], None] | None = None, log_every: int = 10,
    amp: bool = False, channels_last: bool = False, compile: bool = False,
) -> list[float]:
    """Train ``model`` with the annealed DSM loss (Eq. 6) and Adam; the loss of every step.

    Each step draws a batch from a shuffled pass over ``data`` (a new permutation every epoch), a
    noise level per example and the noise, all from one ``torch.Generator`` seeded with ``seed`` on
    the model's device: a run is reproducible for a (device, seed) and resumes bit for bit from a
    checkpoint (model, optimiser, EMA weights, gradient scaler, step, generator state, data order).
    The step never waits for the device: the losses are read and checked every ``log_every`` steps,
    at checkpoints, sample grids and the end (see :meth:`~scorelab.training.ScoreMatchingTrainer.run`).

    In a ``torch.distributed`` process group (``torchrun``) of ``W`` processes, each trains its
    ``batch_size`` slice of a global batch with ``DistributedDataParallel`` (see
    :class:`~scorelab.training.AnnealedDenoisingScoreMatching`): the run equals a one-process
    run at batch ``W * batch_size`` up to float summation order. Rank 0 alone writes
    checkpoints and grids; a resume needs the same ``W``.

    Parameters
    ----------
    model, data : NCSN, Tensor of shape (N, C, H, H)
        Trained in place (holding the EMA weights at the end when there is an EMA); training
        images on [0, 1] of any floating dtype, moved to the model's device and converted to
        its dtype (float32 unless the model was converted) once, as a copy: a float64 data
        set (from NumPy, say) trains as float32.
    n_steps, batch_size, lr, ema_rate : int, int, float, float or None
        Optimiser steps in all (including those before a resume); images per step (per
        process); Adam with betas (0.9, 0.999), as in the authors' configuration; the EMA's rate
        (None: no EMA).
    out_dir, checkpoint_every, sample_every, n_samples, resume : path, int, int, int, bool
        Folder for ``checkpoints/step_XXXXXXX.pt`` (every ``checkpoint_every`` steps and at the
        last) and grids of ``n_samples`` images ``samples_step_XXXXXXX.png``; ``resume``
        continues from its latest checkpoint, generator state included (fresh if there is none).
        A resume must repeat the run: the same data (size and values), ``batch_size``, ``lr``,
        ``ema_rate``, ``amp`` setting, ``seed``, number of processes and device, and an
        ``n_steps`` no smaller than the checkpoint's step (equal: nothing left to train, the
        checkpoint's losses are returned); anything else raises
        :class:`~scorelab.ncsn.CheckpointError` (a ValueError) naming the setting.
    progress, callback, log_every : bool, callable, int
        A tqdm bar with the loss; ``callback(step, loss)`` after every step (from 1; a callback
        reads the loss at every step); read (and check) the losses every ``log_every`` steps.
    amp, channels_last, compile : bool
        Mixed precision (:func:`scorelab.training.mixed_precision`: bf16 autocast, or fp16 with
        a gradient scaler on GPUs without bf16), the channels-last memory layout,
        ``torch.compile`` of the network. All off by default.

    Returns
    -------
    list of float
        Loss of every step (of the whole run, also across a resume).

    Raises
    ------
    ValueError
        For bad arguments, and (as :class:`~scorelab.ncsn.CheckpointError`) for a checkpoint
        that cannot resume this run.
    """
    n_steps = _check_run(model, data, n_steps, out_dir, checkpoint_every, sample_every, resume)
    trainer, batches, generator = make_trainer(
        model, data, batch_size=batch_size, lr=lr, ema_rate=ema_rate, seed=seed, amp=amp,
        channels_last=channels_last, compile=compile)
    settings = None if out_dir is None else _run_settings(trainer, batches, batch_size, seed)
    history = _resume(trainer, batches, generator, out_dir, n_steps, settings) if resume else []
    hooks = _hooks(trainer, batches, generator, history, callback, out_dir, n_steps,
                   checkpoint_every, sample_every, n_samples, seed, settings)
    trainer.run(batches, n_steps, generator=generator, history=history, hooks=hooks,
                progress=progress and trainer.rank == 0, log_every=log_every)
    trainer.use_ema_weights()
    model.to(memory_format=torch.contiguous_format)
    return history


def _check_run(model, data, n_steps, out_dir, checkpoint_every, sample_every, resume) -> int:
    """Check the run's arguments at the start (``data``'s shape, an ``out_dir`` for the outputs
    that need one); ``n_steps`` as an int."""
    n_steps = check_positive_int("n_steps", n_steps)
    for name, every in (("checkpoint_every", checkpoint_every), ("sample_every", sample_every)):
        if every is not None and every != 0:  # None and 0 switch the output off
            check_positive_int(name, every)
    model.check_images("data", data, match_weights=False)  # make_trainer converts the data
    check_unit_interval("data", data)
    if (checkpoint_every or sample_every or resume) and out_dir is None:
        raise ValueError("out_dir is required for checkpoint_every, sample_every or resume")
    return n_steps


def _hooks(trainer, batches, generator, history, callback, out_dir, n_steps, checkpoint_every,
           sample_every, n_samples, seed, settings) -> list:
    """The run's hooks: ``callback``, then checkpoints (with an ``out_dir``), then sample grids.

    Every rank has the same hooks (the losses are read, all together, when one is due); rank 0
    alone writes.
    """
    hooks = [] if callback is None else [callback]
    if out_dir is not None:
        hooks.append(_checkpoint_hook(trainer, batches, generator, history, out_dir,
                                      checkpoint_every, n_steps, settings))
    if sample_every:
        hooks.append((sample_every, _sample_grid_hook(trainer, out_dir, sample_every,
                                                      n_samples, seed)))
    return hooks


def make_trainer(
    model: NCSN, data: torch.Tensor, *, batch_size: int = 128, lr: float = 1e-3,
    ema_rate: float | None = 0.999, seed: int = 0, amp: bool = False,
    channels_last: bool = False, compile: bool = False,
) -> tuple[AnnealedDenoisingScoreMatching, Batches, torch.Generator]:
    """The trainer, the batches and the generator of a :func:`train_NCSN` run (arguments as there).

    The model (and the data, moved to the model's device and converted to its dtype) take the
    chosen memory layout; the generator lives on the model's device; inside a process group
    the batches are global (``batch_size`` per process). ``trainer.run(batches, n,
    generator=generator)`` then runs ``n`` steps (the benchmarks time it so).
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    data = data.to(model.device, model.dtype).contiguous(memory_format=memory_format)
    generator = torch.Generator(model.device).manual_seed(check_seed(seed))
    trainer = AnnealedDenoisingScoreMatching(model, model.sigmas, lr=lr, ema_rate=ema_rate,
                                             amp=amp, compile=compile, distributed=True)
    batches = Batches(data, check_positive_int("batch_size", batch_size) * trainer.world_size,
                      replacement=False, generator=generator)
    return trainer, batches, generator


def _run_settings(trainer, batches: Batches, batch_size: int, seed: int) -> dict:
    """The settings a resume must repeat (compared with a checkpoint's, stored in new ones).

    The seed too: the generator's state is restored from the checkpoint, so another seed would
    not change the training, but the sample grids and ``run.json`` would tell another run.
    """
    precision = trainer.amp_dtype or torch.float32  # the dtype the step computes in
    return {"batch_size": int(batch_size), "data_size": int(batches.data.shape[0]),
            "data_digest": checkpoints.data_digest(batches.data),
            "ema_rate": None if trainer.ema is None else trainer.ema.rate,
            "precision": str(precision).removeprefix("torch."), "seed": int(seed),
            "lr": trainer.lr}


def _resume(trainer, batches: Batches, generator: torch.Generator, out_dir, n_steps: int,
            settings: dict) -> list[float]:
    """Load the latest checkpoint of ``out_dir`` (if any) into the run; the losses so far.

    Everything is checked (the run's ``settings`` from :func:`_run_settings`, ``n_steps``
    against the checkpoint's step, the generator state) before the model, the optimiser, the
    EMA and the generator are loaded.
    """
    path = checkpoints.latest_checkpoint(out_dir)
    if path is None:
        return []
    state = checkpoints.read_training_state(path, model=trainer.model)
    checkpoints.check_same_run(path, state, world_size=trainer.world_size,
                               generator_device=generator.device.type, settings=settings)
    if n_steps < state["step"]:
        raise ValueError(
            f"n_steps ({n_steps}) is smaller than the step of checkpoint {str(path)!r} "
            f"({state['step']}): a resumed run counts all its steps, so ask for at least "
            f"{state['step']}, or start a new out_dir"
        )
    _load_into(path, state, trainer, generator)
    batches.load_state_dict({"order": state["data_order"], "cursor": state["data_cursor"]})
    return list(state["losses"])


def _load_into(path, state: dict, trainer, generator: torch.Generator) -> None:
    """Load the model, the optimiser, the EMA, the gradient scaler and the generator state of
    ``state``; a part that does not fit is a CheckpointError naming ``path`` and the part."""
    name = str(path)
    try:
        torch.Generator(generator.device).set_state(state["generator"])  # a trial on a scratch one
    except (RuntimeError, TypeError, ValueError) as error:
        raise checkpoints.CheckpointError(
            f"checkpoint {name!r} holds an unusable generator state ({error})") from None
    parts = [("model", trainer.model), ("optimizer", trainer.optimizer)]
    if trainer.ema is not None:
        parts.append(("ema", trainer.ema.module))
    if trainer.scaler is not None and state.get("scaler") is not None:
        parts.append(("scaler", trainer.scaler))
    for key, target in parts:
        try:
            target.load_state_dict(state[key])
        except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as error:
            raise checkpoints.CheckpointError(
                f"checkpoint {name!r}: its {key!r} state does not fit this run "
                f"({type(error).__name__}: {error})") from None
    generator.set_state(state["generator"])


def _checkpoint_hook(trainer, batches, generator, history, out_dir, every, n_steps, settings):
    """``(every, hook)``: the hook writes the training state, with the run's ``settings``,
    every ``every`` steps and at the end (on rank 0)."""
    settings = {key: value for key, value in settings.items() if key != "lr"}  # optimiser has it

    def save(done: int, loss: float) -> None:
        if trainer.rank == 0 and (done == n_steps or (every and done % every == 0)):
            checkpoints.save_checkpoint(
                out_dir, model=trainer.model, optimizer=trainer.optimizer,
                ema=None if trainer.ema is None else trainer.ema.module.state_dict(),
                step=done, generator=generator, data_order=batches.state_dict(), losses=history,
                scaler=None if trainer.scaler is None else trainer.scaler.state_dict(),
                world_size=trainer.world_size, **settings,
            )

    return (every or n_steps), save


def _sample_grid_hook(trainer, out_dir, every: int, n_samples: int, seed: int):
    """``hook(done, loss)`` sampling the (EMA) weights into ``samples_step_XXXXXXX.png``."""
    import matplotlib.pyplot as plt

    from scorelab.plotting import image_samples

    def draw(done: int, loss: float) -> None:
        if done % every or trainer.rank != 0:
            return
        sampled = trainer.model if trainer.ema is None else trainer.ema.module
        # A separate generator, so that drawing samples does not change the training stream.
        figure = image_samples(sampled, n=n_samples, generator=torch.Generator().manual_seed(seed))
        figure.savefig(os.path.join(out_dir, f"samples_step_{done:07d}.png"), dpi=100)
        plt.close(figure)

    return draw
