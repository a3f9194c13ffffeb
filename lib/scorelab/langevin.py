"""Langevin samplers driven by a score: plain (ULA), annealed (Song & Ermon, 2019) and MALA.

Step-size convention (the NCSN paper's): one step is

    x <- x + (step_size / 2) * score(x) + sqrt(step_size) * z,   z ~ N(0, I).

The authors' ncsn code writes ``step_size * score + sqrt(2 step_size) z`` instead, which is
this update with twice the number. Every sampler is vectorised over particles, accepts
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

from scorelab._tensors import sum_except_batch
from scorelab._validation import (check_generator, check_positive, check_positive_int,
                                  check_score_shape, check_values)

__all__ = ["geometric_sigmas", "langevin_dynamics", "annealed_langevin_dynamics", "mala",
           "trajectory_bytes", "TRAJECTORY_WARNING_BYTES"]

#: A recorded trajectory larger than this (bytes) triggers a warning before sampling starts.
TRAJECTORY_WARNING_BYTES = 512 * 2**20

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
NoiseConditionalScoreFn = Callable[[torch.Tensor, float], torch.Tensor]
LogProbFn = Callable[[torch.Tensor], torch.Tensor]


def geometric_sigmas(sigma_max: float, sigma_min: float, n_levels: int) -> torch.Tensor:
    """Noise levels in geometric progression from ``sigma_max`` down to ``sigma_min``, shape (L,).

    Song & Ermon (2019, Section 4.1) choose sigma_1 / sigma_2 = ... = sigma_{L-1} / sigma_L > 1.
    """
    sigma_max = check_positive("sigma_max", sigma_max)
    sigma_min = check_positive("sigma_min", sigma_min)
    n_levels = check_positive_int("n_levels", n_levels)
    if n_levels == 1:
        return torch.tensor([sigma_max])
    if sigma_min >= sigma_max:
        raise ValueError(
            f"sigma_min must be smaller than sigma_max, got {sigma_min} >= {sigma_max}"
        )
    exponents = (math.log10(sigma_max), math.log10(sigma_min))
    return torch.logspace(*exponents, n_levels, dtype=torch.float64).float()


def _check_x0(x0) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor):
        raise ValueError(f"x0 must be a torch.Tensor of shape (N, *D), got {type(x0).__name__}")
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(
            "x0 must have shape (N, *D) with a batch dimension of N >= 1 particles, "
            f"got shape {tuple(x0.shape)}"
        )
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor, got dtype {x0.dtype}")
    return check_values("x0", x0)


def _check_sigmas(sigmas) -> list[float]:
    try:
        tensor = torch.as_tensor(sigmas, dtype=torch.float64, device="cpu")
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"sigmas must be a sequence of positive numbers, got {sigmas!r}") from None
    if tensor.ndim > 1:
        raise ValueError(f"sigmas must have shape (L,), got shape {tuple(tensor.shape)}")
    values = tensor.reshape(-1).tolist()
    if len(values) == 0:
        raise ValueError("sigmas must hold at least one noise level")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"sigmas must be positive finite numbers, got {values}")
    if any(later >= earlier for earlier, later in zip(values, values[1:])):
        raise ValueError(f"sigmas must be strictly decreasing (largest noise first), got {values}")
    return values


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


def _check_finite(x: torch.Tensor, step: int, step_size: float, what: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(
            f"{what} diverged: particles became NaN or infinite by step {step} "
            f"(step size {step_size:.3g}); try a smaller step_size"
        )


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


def _langevin_steps(
    score_fn: ScoreFn,
    x: torch.Tensor,
    step_size: float,
    n_steps: int,
    *,
    noise: _RandomSource,
    recorder: _Recorder | None,
    bar,
    first_step: int,
    check_every: int,
    what: str,
) -> torch.Tensor:
    """Run ``n_steps`` updates x <- x + (a/2) s(x) + sqrt(a) z in place on ``x`` ``(N, *D)``."""
    half_step, noise_scale = 0.5 * step_size, math.sqrt(step_size)
    for i in range(n_steps):
        step = first_step + i + 1
        score = score_fn(x)
        if step == 1:
            _check_score(score, x)
        # Refilling one noise buffer and updating x in place keeps the loop free of allocations.
        x.add_(score, alpha=half_step).add_(noise.normal(), alpha=noise_scale)
        if step % check_every == 0:
            _check_finite(x, step, step_size, what)
        if recorder is not None:
            recorder.step(step, x)
        if bar is not None:
            bar.update(1)
    return x


def _prepare(
    x0,
    n_steps: int,
    return_trajectory: bool,
    record_every,
    progress: bool,
    description: str,
    generator: torch.Generator | None,
    extra_frames: int = 0,
):
    """Copy x0, and make the noise source, the trajectory recorder and the progress bar."""
    x = _check_x0(x0).detach().clone()
    check_generator(generator)
    record_every = check_positive_int("record_every", record_every)
    recorder = _Recorder(x, n_steps, record_every, extra_frames) if return_trajectory else None
    if recorder is not None:
        description = f"{description} (keeping {_format_bytes(recorder.n_bytes)})"
    bar = tqdm(total=n_steps, desc=description, leave=False) if progress else None
    return x, _RandomSource(x, generator), recorder, bar


@torch.no_grad()
def langevin_dynamics(
    score_fn: ScoreFn,
    x0: torch.Tensor,
    step_size: float,
    n_steps: int,
    *,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    record_every: int = 1,
    progress: bool = True,
    check_every: int = 25,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Unadjusted Langevin dynamics with a known score (Song & Ermon, 2019, Eq. 2).

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
        Check every this many steps (and at the end) that all particles are finite.

    Returns
    -------
    Tensor, shape ``(N, *D)``, or (Tensor, Tensor) with the trajectory.

    Raises
    ------
    ValueError
        On bad arguments, and when particles become NaN or infinite (naming the step).
    """
    step_size = check_positive("step_size", step_size)
    n_steps = check_positive_int("n_steps", n_steps)
    check_every = check_positive_int("check_every", check_every)
    x, noise, recorder, bar = _prepare(
        x0, n_steps, return_trajectory, record_every, progress, "Langevin", generator
    )
    try:
        _langevin_steps(
            score_fn, x, step_size, n_steps, noise=noise, recorder=recorder,
            bar=bar, first_step=0, check_every=check_every, what="Langevin dynamics",
        )
    finally:
        if bar is not None:
            bar.close()
    _check_finite(x, n_steps, step_size, "Langevin dynamics")
    return (x, recorder.frames) if recorder is not None else x


@torch.no_grad()
def annealed_langevin_dynamics(
    score_fn: NoiseConditionalScoreFn,
    x0: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    step_size: float,
    n_steps_each: int,
    *,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    record_every: int = 1,
    progress: bool = True,
    denoise: bool = False,
    check_every: int = 25,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Annealed Langevin dynamics (Song & Ermon, 2019, Algorithm 1).

    For each level :math:`\sigma_i` (largest first), run ``n_steps_each`` Langevin steps on
    :math:`s(x, \sigma_i)` with step :math:`\alpha_i = \epsilon\, \sigma_i^2 / \sigma_L^2`, so the
    signal-to-noise ratio of an update is the same at every level.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, sigma)`` returns the score of the density perturbed at noise level
        ``sigma`` (a Python float), a tensor of ``x``'s shape ``(N, *D)``.
    x0 : Tensor, shape ``(N, *D)``
        Initial particles (left unchanged), e.g. uniform noise.
    sigmas : sequence of float or Tensor, shape (L,)
        Strictly decreasing, positive noise levels.
    step_size : float
        The base step epsilon > 0, used as is at the last level.
    n_steps_each : int
        Steps per level (T), >= 1.
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
    levels = _check_sigmas(sigmas)
    step_size = check_positive("step_size", step_size)
    n_steps_each = check_positive_int("n_steps_each", n_steps_each)
    check_every = check_positive_int("check_every", check_every)
    total = len(levels) * n_steps_each
    x, noise, recorder, bar = _prepare(
        x0, total, return_trajectory, record_every, progress, "annealed Langevin", generator,
        extra_frames=int(denoise),
    )
    sigma_last = levels[-1]
    try:
        for index, sigma in enumerate(levels):
            level_step = step_size * (sigma / sigma_last) ** 2
            # Bind the level once, so the inner loop sees a plain score_fn(x).
            level_score = lambda z, sigma=sigma: score_fn(z, sigma)  # noqa: E731
            what = f"Annealed Langevin dynamics (level sigma={sigma:.3g})"
            _langevin_steps(
                level_score, x, level_step, n_steps_each, noise=noise,
                recorder=recorder, bar=bar, first_step=index * n_steps_each,
                check_every=check_every, what=what,
            )
            _check_finite(x, (index + 1) * n_steps_each, level_step, what)
    finally:
        if bar is not None:
            bar.close()
    if denoise:
        x.add_(score_fn(x, sigma_last), alpha=sigma_last**2)
        _check_finite(x, total, step_size, "The final denoising step")
        if recorder is not None:
            recorder.append(x)
    return (x, recorder.frames) if recorder is not None else x


@torch.no_grad()
def mala(
    log_prob_fn: LogProbFn,
    score_fn: ScoreFn,
    x0: torch.Tensor,
    step_size: float,
    n_steps: int,
    *,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    record_every: int = 1,
    progress: bool = True,
    check_every: int = 25,
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
    step_size = check_positive("step_size", step_size)
    n_steps = check_positive_int("n_steps", n_steps)
    check_every = check_positive_int("check_every", check_every)
    x, noise, recorder, bar = _prepare(
        x0, n_steps, return_trajectory, record_every, progress, "MALA", generator
    )
    half_step, noise_scale = 0.5 * step_size, math.sqrt(step_size)
    log_p, score = log_prob_fn(x), score_fn(x)
    _check_score(score, x)
    # A NaN proposal is always rejected, so a NaN score would stall the chain without a sign.
    if not torch.isfinite(score).all():
        raise ValueError("score_fn returned NaN or infinite values at x0")
    if not isinstance(log_p, torch.Tensor) or log_p.shape != x.shape[:1]:
        got = tuple(log_p.shape) if isinstance(log_p, torch.Tensor) else type(log_p).__name__
        raise ValueError(f"log_prob_fn must return a tensor of shape ({x.shape[0]},), got {got}")
    accepted = torch.zeros((), dtype=torch.float64, device=x.device)
    uniform = _RandomSource(log_p, generator)
    try:
        for step in range(1, n_steps + 1):
            z = noise.normal()
            proposal = x + half_step * score + noise_scale * z
            log_p_new, score_new = log_prob_fn(proposal), score_fn(proposal)
            # log q(x | y) - log q(y | x); the forward residual is exactly sqrt(alpha) z.
            backward = x - proposal - half_step * score_new
            log_ratio = (log_p_new - log_p
                         - sum_except_batch(backward.square()) / (2.0 * step_size)
                         + 0.5 * sum_except_batch(z.square()))
            # A NaN ratio (a proposal at inf) compares False, so it is rejected, never accepted.
            accept = uniform.uniform().log() < log_ratio  # (N,)
            mask = accept.reshape(-1, *([1] * (x.ndim - 1)))  # (N, 1, ..., 1)
            x = torch.where(mask, proposal, x)
            score = torch.where(mask, score_new, score)
            log_p = torch.where(accept, log_p_new, log_p)
            accepted += accept.sum()
            if step % check_every == 0:
                _check_finite(x, step, step_size, "MALA")
            if recorder is not None:
                recorder.step(step, x)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    _check_finite(x, n_steps, step_size, "MALA")
    rate = float(accepted) / (n_steps * x.shape[0])
    return (x, rate, recorder.frames) if recorder is not None else (x, rate)
