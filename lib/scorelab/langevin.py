"""Langevin samplers driven by a score: plain (ULA), annealed (Song & Ermon, 2019) and MALA.

Step-size convention (the NCSN paper's): one step is::

    x <- x + (step_size / 2) * score(x) + sqrt(step_size) * z,   z ~ N(0, I).

The authors' image sampler (ncsn's annealed Langevin runner, and NCSNv2's) writes
``step * score + sqrt(2 step) z`` instead, the same update with step_size = 2 * step; their toy
experiments use the form above. Every sampler is vectorised over particles, accepts
``x0`` of any shape ``(N, *D)`` (points or images), runs under ``torch.no_grad()`` (a score
function that needs autograd must switch it on itself with ``torch.enable_grad()``), and
checks every ``check_every`` steps, and at the end, that no particle became NaN or
infinite. The particles are updated in place, on a copy of ``x0``: a score function that
wants to keep the states it sees must clone them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from scorelab._tensors import broadcast_like, sum_except_batch
from scorelab._validation import (call_on_samples, check_batch, check_callable, check_generator,
                                  check_flag, check_positive, check_positive_int,
                                  check_score_shape)
from scorelab.noise import check_sigmas, geometric_sigmas  # noqa: F401 (its earlier home)
from scorelab.scores import ScoreFn as NoiseConditionalScoreFn

__all__ = ["langevin_dynamics", "annealed_langevin_dynamics", "mala", "trajectory_bytes",
           "TRAJECTORY_WARNING_BYTES"]

#: A recorded trajectory larger than this (bytes) triggers a warning before sampling starts.
TRAJECTORY_WARNING_BYTES = 512 * 2**20

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
LogProbFn = Callable[[torch.Tensor], torch.Tensor]


def trajectory_bytes(x0: torch.Tensor, n_steps: int, record_every: int = 1, extra: int = 0) -> int:
    """Bytes that a trajectory of ``1 + n_steps // record_every + extra`` frames of ``x0`` takes."""
    n_frames = 1 + n_steps // record_every + extra
    return n_frames * x0.numel() * x0.element_size()


def _format_bytes(n_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


class _Recorder:
    """Keeps the initial state and every ``record_every``-th state in one preallocated tensor."""

    def __init__(self, x0: torch.Tensor, n_steps: int, record_every: int, extra: int = 0) -> None:
        self.every = record_every
        n_frames = 1 + n_steps // record_every + extra
        self.n_bytes = trajectory_bytes(x0, n_steps, record_every, extra)
        # Say what the trajectory will hold before allocating it: a warning only when it is large,
        # so that chapters recording small trajectories stay quiet.
        if self.n_bytes > TRAJECTORY_WARNING_BYTES:
            warnings.warn(
                f"return_trajectory will keep {n_frames} frames of shape {tuple(x0.shape)}: "
                f"{self.n_bytes} bytes ({_format_bytes(self.n_bytes)}); raise record_every "
                "or sample fewer particles to keep less",
                UserWarning, stacklevel=5,  # the caller of the (no_grad-wrapped) sampler
            )
        shape = (n_frames, *x0.shape)  # (T, N, *D)
        self.frames = torch.empty(shape, dtype=x0.dtype, device=x0.device)
        self.frames[0] = x0
        self.count = 1

    def step(self, step: int, x: torch.Tensor) -> None:
        """Record ``x`` after 1-based global ``step`` when it is a multiple of ``record_every``."""
        if step % self.every == 0:
            self.append(x)

    def append(self, x: torch.Tensor) -> None:
        self.frames[self.count] = x
        self.count += 1


def _check_score(score, x: torch.Tensor) -> None:
    """The score must have x's shape and live on x's device (the in-place update needs both)."""
    check_score_shape("score_fn", score, x)
    if score.device != x.device:
        raise ValueError(
            f"score_fn must return a tensor on the particles' device {x.device}, got {score.device}"
        )
    if not score.is_floating_point():
        raise ValueError(f"score_fn must return a floating-point tensor, got dtype {score.dtype}")


def _divergence(step: int, step_size: float, what: str) -> ValueError:
    return ValueError(
        f"{what} diverged: particles became NaN or infinite by step {step} "
        f"(step size {step_size:.3g}); try a smaller step_size"
    )


def _check_finite(x: torch.Tensor, step: int, step_size: float, what: str) -> None:
    if not torch.isfinite(x).all():
        raise _divergence(step, step_size, what)


class _RandomSource:
    """Refills one buffer shaped like a template with fresh draws from ``generator``.

    Draws are made on the generator's device: a seeded CPU generator may drive particles on
    an accelerator (its draws are copied over), so a seed gives the same chain anywhere.
    """

    def __init__(self, template: torch.Tensor, generator: torch.Generator | None) -> None:
        self.generator = generator
        self.buffer = torch.empty_like(template)
        elsewhere = generator is not None and generator.device != template.device
        self.host = torch.empty_like(template, device=generator.device) if elsewhere else None

    def normal(self) -> torch.Tensor:
        """The buffer, filled with N(0, 1) draws."""
        if self.host is None:
            return self.buffer.normal_(generator=self.generator)
        return self.buffer.copy_(self.host.normal_(generator=self.generator))

    def uniform(self) -> torch.Tensor:
        """The buffer, filled with U(0, 1) draws."""
        if self.host is None:
            return self.buffer.uniform_(generator=self.generator)
        return self.buffer.copy_(self.host.uniform_(generator=self.generator))


class _Chain:
    """The particles of one sampler run, and what goes with them at every step.

    Checks and copies ``x0`` (the run's particles ``x`` are updated in place), draws the
    Gaussian noise, records the trajectory, shows progress, checks the first score's
    shape at the first step and every ``check_every`` steps, and then and at the end that the
    particles are finite.
    """

    def __init__(self, x0, n_steps: int, *, generator, return_trajectory: bool, record_every,
                 progress: bool, check_every, description: str, extra_frames: int = 0) -> None:
        self.x = check_batch("x0", x0).detach().clone()
        check_generator(generator, self.x.device)
        self.check_every = check_positive_int("check_every", check_every)
        record_every = check_positive_int("record_every", record_every)
        self.recorder = None
        if return_trajectory:
            self.recorder = _Recorder(self.x, n_steps, record_every, extra_frames)
            description = f"{description} (keeping {_format_bytes(self.recorder.n_bytes)})"
        self.noise = _RandomSource(self.x, generator)
        self.bar = tqdm(total=n_steps, desc=description, leave=False) if progress else None
        self.steps = 0

    def score(self, score_fn: Callable, *args, step_size: float, what: str) -> torch.Tensor:
        """``score_fn(x, *args)``; on particles that are no longer finite, the divergence
        error (:func:`~scorelab._validation.call_on_samples`)."""
        return call_on_samples(score_fn, self.x, *args,
                               diverged=lambda: _divergence(self.steps, step_size, what))

    def langevin_step(self, score: torch.Tensor, step_size: float, what: str,
                      check: bool = False) -> None:
        """x <- x + (step_size / 2) score + sqrt(step_size) z, in place, then :meth:`done`.

        The score's shape, device and dtype are checked at the first step, every
        ``check_every`` steps and when ``check`` is set (a wrong shape would broadcast into x).
        """
        if check or self.steps % self.check_every == 0:
            _check_score(score, self.x)
        # Refilling one noise buffer and updating x in place keeps the loop free of allocations.
        self.x.add_(score, alpha=0.5 * step_size).add_(self.noise.normal(),
                                                      alpha=math.sqrt(step_size))
        self.done(step_size, what)

    def done(self, step_size: float, what: str) -> None:
        """Count a step; check the particles every ``check_every`` steps; record; progress."""
        self.steps += 1
        if self.steps % self.check_every == 0:
            _check_finite(self.x, self.steps, step_size, what)
        if self.recorder is not None:
            self.recorder.step(self.steps, self.x)
        if self.bar is not None:
            self.bar.update(1)

    def result(self, step_size: float, what: str, *extra):
        """Close the bar, check the final particles; x (or x, *extra, trajectory)."""
        if self.bar is not None:
            self.bar.close()
        _check_finite(self.x, self.steps, step_size, what)
        if self.recorder is None:
            return (self.x, *extra) if extra else self.x
        return (self.x, *extra, self.recorder.frames)

    def __enter__(self) -> _Chain:
        return self

    def __exit__(self, *error) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def langevin_dynamics(
    score_fn: ScoreFn, x0: torch.Tensor, step_size: float, n_steps: int, *,
    generator: torch.Generator | None = None, return_trajectory: bool = False,
    record_every: int = 1, progress: bool = True, check_every: int = 25,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Unadjusted Langevin dynamics with a known score (Song & Ermon, 2019, Sec. 2.2, Eq. 4).

    Repeats :math:`x_t = x_{t-1} + \tfrac{\alpha}{2} \nabla_x \log p(x_{t-1}) + \sqrt{\alpha} z_t`.
    Its stationary law differs from p by a bias of order alpha; :func:`mala` removes it.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x)`` returns the score at ``x``, a tensor of ``x``'s shape ``(N, *D)``.
    x0 : Tensor, shape ``(N, *D)``
        Initial particles (left unchanged).
    step_size : float
        The step size alpha > 0.
    n_steps : int
        Number of updates, >= 1.
    generator : torch.Generator, optional
        Source of the Gaussian noise.
    return_trajectory : bool
        Also return the states x_0, x_k, x_2k, ..., shape ``(1 + n_steps // record_every, N, *D)``.
        The trajectory is allocated before the first step; its size shows in the progress
        bar's description, and one over ``TRAJECTORY_WARNING_BYTES`` gives a ``UserWarning``
        stating the bytes (see :func:`trajectory_bytes`).
    record_every : int
        Record every ``record_every``-th state (k).
    progress : bool
        Show a ``tqdm.auto`` progress bar.
    check_every : int
        Check every this many steps (and at the end) that all particles are finite and that
        the score has their shape (checking every step would make a sampler on a GPU wait
        for it at every step).

    Returns
    -------
    Tensor, shape ``(N, *D)``, or (Tensor, Tensor) with the trajectory.

    Raises
    ------
    ValueError
        On bad arguments, and when particles become NaN or infinite (naming the step).
    """
    check_callable("score_fn", score_fn, "score_fn(x)")
    step_size = check_positive("step_size", step_size)
    n_steps = check_positive_int("n_steps", n_steps)
    with _Chain(x0, n_steps, generator=generator, return_trajectory=return_trajectory,
                record_every=record_every, progress=progress, check_every=check_every,
                description="Langevin") as chain:
        what = "Langevin dynamics"
        for _ in range(n_steps):
            chain.langevin_step(chain.score(score_fn, step_size=step_size, what=what),
                                step_size, what)
    return chain.result(step_size, "Langevin dynamics")


@torch.no_grad()
def annealed_langevin_dynamics(
    score_fn: NoiseConditionalScoreFn, x0: torch.Tensor, sigmas: Sequence[float] | torch.Tensor,
    step_size: float, n_steps_each: int, *, generator: torch.Generator | None = None,
    return_trajectory: bool = False, record_every: int = 1, progress: bool = True,
    denoise: bool = False, check_every: int = 25,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Annealed Langevin dynamics (Song & Ermon, 2019, Algorithm 1).

    For each level :math:`\sigma_i` (largest first), run ``n_steps_each`` Langevin steps on
    :math:`s(x, \sigma_i)` with step :math:`\alpha_i = \epsilon\, \sigma_i^2 / \sigma_L^2`, so the
    signal-to-noise ratio of an update is the same at every level.

    Parameters
    ----------
    score_fn : callable
        The score contract (:mod:`scorelab.scores`): ``score_fn(x, sigma)``, here called with
        ``sigma`` a Python float, returns the score of p_sigma at ``x`` ``(N, *D)``.
    x0 : Tensor, shape ``(N, *D)``
        Initial particles (left unchanged), e.g. uniform noise.
    sigmas : sequence of float or Tensor, shape (L,)
        Strictly decreasing, positive noise levels (:func:`scorelab.noise.check_sigmas`).
    step_size, n_steps_each : float, int
        The base step epsilon > 0, used as is at the last level; steps per level T >= 1.
    generator, return_trajectory, record_every, progress, check_every
        As in :func:`langevin_dynamics`; steps are counted across levels, so the
        trajectory has shape ``(1 + L * T // record_every, N, *D)``.
    denoise : bool
        Finish with one denoising step :math:`x + \sigma_L^2 s(x, \sigma_L)` (Tweedie's
        formula, the posterior mean of the clean sample); with ``return_trajectory`` the
        denoised state is appended as the last frame.

    Returns
    -------
    Tensor, shape ``(N, *D)``, or (Tensor, Tensor) with the trajectory.
    """
    check_callable("score_fn", score_fn, "score_fn(x, sigma)")
    sigmas = check_sigmas(sigmas).tolist()
    epsilon = check_positive("step_size", step_size)
    n_steps_each = check_positive_int("n_steps_each", n_steps_each)
    denoise = check_flag("denoise", denoise)
    with _Chain(x0, len(sigmas) * n_steps_each, generator=generator, extra_frames=int(denoise),
                return_trajectory=return_trajectory, record_every=record_every,
                progress=progress, check_every=check_every,
                description="annealed Langevin") as chain:
        x, sigma_last = chain.x, sigmas[-1]
        for sigma in sigmas:  # Algorithm 1: for i = 1..L
            alpha = epsilon * (sigma / sigma_last) ** 2  # alpha_i = eps sigma_i^2 / sigma_L^2
            what = f"Annealed Langevin dynamics (level sigma={sigma:.3g})"
            for t in range(n_steps_each):  # for t = 1..T
                # x_t = x_{t-1} + alpha_i/2 s(x_{t-1}, sigma_i) + sqrt(alpha_i) z_t
                score = chain.score(score_fn, sigma, step_size=alpha, what=what)
                chain.langevin_step(score, alpha, what, check=t == 0)
            _check_finite(x, chain.steps, alpha, what)
        if denoise:  # Tweedie: x + sigma_L^2 s(x, sigma_L), the mean of the clean sample
            score = score_fn(x, sigma_last)
            _check_score(score, x)
            x.add_(score, alpha=sigma_last**2)
            if chain.recorder is not None:
                chain.recorder.append(x)
    return chain.result(epsilon, "The final denoising step" if denoise else what)


@torch.no_grad()
def mala(
    log_prob_fn: LogProbFn, score_fn: ScoreFn, x0: torch.Tensor, step_size: float, n_steps: int,
    *, generator: torch.Generator | None = None, return_trajectory: bool = False,
    record_every: int = 1, progress: bool = True, check_every: int = 25,
) -> tuple[torch.Tensor, float] | tuple[torch.Tensor, float, torch.Tensor]:
    r"""Metropolis-adjusted Langevin algorithm (Roberts & Tweedie, 1996).

    Proposes :math:`y = x + \tfrac{\alpha}{2} s(x) + \sqrt{\alpha} z` and accepts it with
    probability :math:`\min\{1, \frac{p(y)\, q(x \mid y)}{p(x)\, q(y \mid x)}\}`, where
    :math:`q(y \mid x) = N(y; x + \tfrac{\alpha}{2} s(x), \alpha I)`, so p is exactly stationary
    for any step size (unlike :func:`langevin_dynamics`).

    Parameters
    ----------
    log_prob_fn : callable
        ``log_prob_fn(x)`` returns the (unnormalised) log-density, shape (N,).
    score_fn : callable
        ``score_fn(x)`` returns its gradient, shape ``(N, *D)``.
    x0, step_size, n_steps, generator, return_trajectory, record_every, progress, check_every
        As in :func:`langevin_dynamics`.

    Returns
    -------
    (x, acceptance_rate) or (x, acceptance_rate, trajectory)
        Final particles ``(N, *D)``, the fraction of accepted proposals over all particles
        and steps (a float), and the trajectory ``(1 + n_steps // record_every, N, *D)``.
    """
    check_callable("log_prob_fn", log_prob_fn, "log_prob_fn(x)")
    check_callable("score_fn", score_fn, "score_fn(x)")
    step_size = check_positive("step_size", step_size)
    n_steps = check_positive_int("n_steps", n_steps)
    with _Chain(x0, n_steps, generator=generator, return_trajectory=return_trajectory,
                record_every=record_every, progress=progress, check_every=check_every,
                description="MALA") as chain:
        state = _mala_start(log_prob_fn, score_fn, chain.x)  # (x, log p(x), s(x))
        uniform, accepted = _RandomSource(state[1], generator), 0
        for _ in range(n_steps):
            state, accept = _mala_step(log_prob_fn, score_fn, state, step_size,
                                       chain.noise.normal(), uniform.uniform(), chain.steps + 1)
            chain.x = state[0]
            accepted += accept.sum()
            chain.done(step_size, "MALA")
    rate = float(accepted) / (n_steps * chain.x.shape[0])
    return chain.result(step_size, "MALA", rate)


def _mala_start(log_prob_fn: LogProbFn, score_fn: ScoreFn, x: torch.Tensor):
    """The chain's state at x0, ``(x, log p(x) (N,), s(x) (N, *D))``, its outputs checked."""
    log_p, score = log_prob_fn(x), score_fn(x)
    _check_score(score, x)
    # A NaN proposal is always rejected, so a NaN score would stall the chain without a sign.
    if not torch.isfinite(score).all():
        raise ValueError("score_fn returned NaN or infinite values at x0")
    if not isinstance(log_p, torch.Tensor) or log_p.shape != x.shape[:1]:
        got = tuple(log_p.shape) if isinstance(log_p, torch.Tensor) else type(log_p).__name__
        raise ValueError(f"log_prob_fn must return a tensor of shape ({x.shape[0]},), got {got}")
    if not log_p.is_floating_point():
        raise ValueError(f"log_prob_fn must return a floating-point tensor, got {log_p.dtype}")
    # A NaN (or +inf) log-density at x0 rejects every proposal: the chain would never move.
    if torch.isnan(log_p).any() or torch.isposinf(log_p).any():
        raise ValueError("log_prob_fn returned NaN or +infinity at x0")
    return x.clone(), log_p, score


def _mala_step(log_prob_fn, score_fn, state, step_size: float, z: torch.Tensor, u: torch.Tensor,
               step: int):
    """Step ``step`` (from 1), Metropolis-adjusted, from ``state``; the new state and the
    accepted mask (N,)."""
    x, log_p, score = state
    proposal = x + 0.5 * step_size * score + math.sqrt(step_size) * z  # y
    def overflowed() -> ValueError:
        return ValueError(
            f"MALA's proposals overflowed to NaN or infinity at step {step} (step size "
            f"{step_size:.3g}), where log_prob_fn and score_fn cannot be evaluated; try a "
            "smaller step_size"
        )

    log_p_new = call_on_samples(log_prob_fn, proposal, diverged=overflowed)
    score_new = call_on_samples(score_fn, proposal, diverged=overflowed)
    # log q(x | y) - log q(y | x); the forward residual is exactly sqrt(alpha) z.
    backward = x - proposal - 0.5 * step_size * score_new
    log_ratio = (log_p_new - log_p - sum_except_batch(backward.square()) / (2.0 * step_size)
                 + 0.5 * sum_except_batch(z.square()))
    # A NaN ratio (a proposal at inf) compares False, so it is rejected, never accepted.
    accept = u.log() < log_ratio  # (N,)
    mask = broadcast_like(accept, x)  # (N, 1, ..., 1)
    new_state = (torch.where(mask, proposal, x), torch.where(accept, log_p_new, log_p),
                 torch.where(mask, score_new, score))
    return new_state, accept
