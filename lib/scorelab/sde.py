r"""From noise ladders to stochastic differential equations: the VE SDE, its samplers, likelihoods.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021): *Score-Based Generative Modeling
through Stochastic Differential Equations* (ICLR 2021), equation numbers of the arXiv version
2011.13456. The noise ladder of Song & Ermon (2019) is a Markov chain (Eq. 8, written here
with the course's numbering, sigma_1 the largest level),
:math:`x_i = x_{i+1} + \sqrt{\sigma_i^2 - \sigma_{i+1}^2}\, z`; with infinitely many levels it
becomes the **variance-exploding SDE** (Eq. 9)

.. math:: dx = \sqrt{\frac{d[\sigma^2(t)]}{dt}}\, dw, \qquad
          \sigma(t) = \sigma_{\min} (\sigma_{\max} / \sigma_{\min})^t, \quad t \in [0, 1],

whose marginal at time t is the data convolved with :math:`N(0, \sigma(t)^2 I)` (taking the
data at :math:`\sigma_{\min}` as the start, as the paper does). Time runs backwards in the
reverse SDE (Eq. 6, from Anderson 1982), :math:`dx = -g(t)^2 \nabla_x \log p_t(x)\, dt +
g(t)\, d\bar w`, and the probability-flow ODE (Eq. 13), :math:`dx = -\tfrac12 g(t)^2
\nabla_x \log p_t(x)\, dt`, carries the same marginals without noise and gives exact
log-likelihoods by the instantaneous change of variables (Chen et al. 2018, Theorem 1;
Song et al. 2021, Appendix D.2).

Every sampler takes the score contract of :mod:`scorelab.scores`, ``score_fn(x, sigma)``
with ``sigma`` a float (all the samplers here pass one float per step: the whole batch
shares its time) and ``x`` of shape (N, *D), and returns samples of the same shape.

The ODE solver is SciPy's ``solve_ivp`` (adaptive Dormand-Prince RK45 by default), not
torchdiffeq: SciPy is maintained, already installed with scikit-learn (no new dependency
for the course or on Colab), integrates in float64 whatever the model's dtype (the
likelihood targets need it), and is the solver of Song et al.'s own likelihood code. Its
cost: the state goes through NumPy on the CPU at every evaluation, and there is no
adjoint method; nothing here trains through the ODE, and the toys live on the CPU.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from scorelab._tensors import rand, randn, randn_like, sum_except_batch
from scorelab._validation import (call_on_samples, check_batch, check_callable, check_generator,
                                  check_positive, check_positive_int, check_positive_real,
                                  check_positive_values, check_real, check_score_shape)
from scorelab.noise import geometric_sigmas
from scorelab.training import ScoreMatchingTrainer, _sigma_weighted_dsm

__all__ = ["VESDE", "euler_maruyama", "predictor_corrector", "probability_flow",
           "log_likelihood", "corrector_step_size", "ScoreCounter", "continuous_dsm_loss",
           "ContinuousDenoisingScoreMatching"]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
DIRECTIONS = ("backward", "forward")


def _check_real_tensor(name: str, x: torch.Tensor) -> torch.Tensor:
    """Refuse a complex or boolean tensor (times and noise levels are real)."""
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be a real tensor, got dtype {x.dtype}")
    return x


def _check_time(t):
    """A time in [0, 1]: a finite real number (returned as a float) or a tensor of such times."""
    if isinstance(t, torch.Tensor):
        t = _check_real_tensor("t", t)
        if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):  # False for NaN too
            raise ValueError(f"t must hold finite times in [0, 1], got values in "
                             f"[{t.min().item()}, {t.max().item()}]")
        return t
    number = check_real("t", t)
    if not 0.0 <= number <= 1.0:  # False for NaN too
        raise ValueError(f"t must be a finite time in [0, 1], got {t!r}")
    return number


def _check_shape(shape) -> tuple[int, ...]:
    """``shape`` as a tuple (N, *D) of at least two positive ints (any integer-like sizes)."""

    def size(n) -> int | None:
        if isinstance(n, bool):
            return None
        try:
            return operator.index(n)
        except TypeError:
            return None

    try:
        sizes = tuple(size(n) for n in shape)
    except TypeError:  # not a sequence: a single size, a float, ...
        sizes = ()
    if len(sizes) < 2 or any(n is None or n < 1 for n in sizes):
        raise ValueError(f"shape must be (N, *D): at least two positive integers, got {shape!r}")
    return sizes


class VESDE:
    r"""The variance-exploding SDE of Song et al. (2021, Eq. 9): the continuum of the NCSN ladder.

    .. math:: \sigma(t) = \sigma_{\min} (\sigma_{\max} / \sigma_{\min})^t, \qquad
              g(t)^2 = \frac{d\,\sigma^2(t)}{dt}
                     = 2 \sigma(t)^2 \log\frac{\sigma_{\max}}{\sigma_{\min}}.

    Parameters
    ----------
    sigma_min, sigma_max : float
        The noise at t = 0 and t = 1, with 0 < sigma_min < sigma_max.

    Notes
    -----
    The prior is :math:`N(0, \sigma_{\max}^2 I)`, which stands in for the true marginal
    :math:`p_1 = p * N(0, \sigma_{\max}^2 I)`: it is close only when
    :math:`\sigma_{\max}` dwarfs the data's spread (NCSNv2's Technique 1).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        self.sigma_min = check_positive_real("sigma_min", sigma_min)
        self.sigma_max = check_positive_real("sigma_max", sigma_max)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min must be smaller than sigma_max, got sigma_min = "
                             f"{self.sigma_min} >= sigma_max = {self.sigma_max}")
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)
        if not math.isfinite(self.log_ratio):
            raise ValueError(f"sigma_max / sigma_min must be a finite ratio, got sigma_min = "
                             f"{self.sigma_min} and sigma_max = {self.sigma_max}")
        if not math.isfinite(2.0 * self.log_ratio * self.sigma_max * self.sigma_max):
            raise ValueError(f"sigma_max = {self.sigma_max} is too large: g(1)^2 = 2 sigma_max^2 "
                             "log(sigma_max / sigma_min) overflows a float")

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def sigma(self, t):
        """The noise level sigma(t) = sigma_min (sigma_max / sigma_min)^t.

        ``t`` is a float in [0, 1] (a float is returned) or a tensor of such times, of any
        shape (a tensor of that shape is returned).
        """
        return self._sigma(_check_time(t))

    def _sigma(self, t):
        """:meth:`sigma` without the check of t (for times known to lie in [0, 1])."""
        if isinstance(t, torch.Tensor):
            return self.sigma_min * torch.exp(t * self.log_ratio)
        return self.sigma_min * math.exp(t * self.log_ratio)

    def g2(self, t):
        """The squared diffusion coefficient g(t)^2 = d sigma^2 / dt = 2 sigma(t)^2 log(smax/smin).

        ``t`` as in :meth:`sigma`.
        """
        return 2.0 * self.log_ratio * self.sigma(t) ** 2

    def diffusion(self, t):
        """The diffusion coefficient g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)).

        ``t`` as in :meth:`sigma`.
        """
        return math.sqrt(2.0 * self.log_ratio) * self.sigma(t)

    def time_of(self, sigma):
        """The time t at which sigma(t) = sigma (the inverse of :meth:`sigma`).

        ``sigma`` is a positive finite float (a float is returned) or a tensor of such noise
        levels, of any shape (a tensor of that shape is returned). A sigma outside [sigma_min,
        sigma_max] gives a time outside [0, 1].
        """
        if isinstance(sigma, torch.Tensor):
            sigma = _check_real_tensor("sigma", sigma)
            check_positive_values("sigma", sigma)
            return torch.log(sigma / self.sigma_min) / self.log_ratio
        sigma = check_positive_real("sigma", sigma)
        return math.log(sigma / self.sigma_min) / self.log_ratio

    def time_grid(self, n_steps: int) -> torch.Tensor:
        """The times 1 > 1 - 1/n > ... > 1/n > 0 of ``n = n_steps`` equal reverse-time steps.

        Float64, shape (n_steps + 1,).
        """
        n_steps = check_positive_int("n_steps", n_steps)
        return torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64)

    def discretize(self, n_levels: int) -> torch.Tensor:
        """The SDE's noise at ``n_levels`` equally spaced times from 1 to 0, shape (L,).

        sigma(1 - (i - 1) / (L - 1)) = sigma_max (sigma_min / sigma_max)^((i - 1) / (L - 1)):
        the geometric ladder of Song & Ermon (2019), ``geometric_sigmas(sigma_max, sigma_min,
        L)``, which this returns. The SDE's Markov chain (Song et al. 2021, Eq. 8, whose levels
        run from smallest to largest) adds independent noise of variance sigma_i^2 -
        sigma_{i+1}^2 going from level i + 1 to level i of this largest-first ladder.
        """
        n_levels = check_positive_int("n_levels", n_levels)
        if n_levels < 2:
            raise ValueError("n_levels must be at least 2 (sigma_max and sigma_min), "
                             f"got {n_levels}")
        return geometric_sigmas(self.sigma_max, self.sigma_min, n_levels)

    def prior_sample(self, shape, *, generator: torch.Generator | None = None,
                     dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """Draws of the prior N(0, sigma_max^2 I), of ``shape`` (N, *D).

        ``shape`` holds at least two positive integers (Python or NumPy ints, ...); ``dtype``
        is a floating torch.dtype (default: torch's default dtype). On ``device`` (default:
        the generator's device, else the CPU), drawn on the generator's.
        """
        if device is None:
            device = generator.device if isinstance(generator, torch.Generator) else "cpu"
        check_generator(generator, device)
        shape = _check_shape(shape)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype such as torch.float32, "
                             f"got {dtype!r}")
        return self.sigma_max * randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior N(0, sigma_max^2 I) at ``x`` (N, *D), shape (N,), in nats."""
        x = check_batch("x", x)
        dim = x[0].numel()
        return (-0.5 * sum_except_batch(x.square()) / self.sigma_max**2
                - 0.5 * dim * math.log(2.0 * math.pi * self.sigma_max**2))


def _check_sde(sde) -> VESDE:
    if not isinstance(sde, VESDE):
        raise ValueError(f"sde must be a VESDE, got {type(sde).__name__}")
    return sde


def _check_score_fn(score_fn) -> None:
    check_callable("score_fn", score_fn, "score_fn(x, sigma)")


class _NonFiniteInput(Exception):
    """score_fn raised on samples that were no longer finite (the package's densities refuse
    them): the caller reports the divergence, chained to score_fn's own error."""


def _score(score_fn, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Call the score and check that it is shaped like x (a clear error instead of a broadcast)."""
    score = call_on_samples(score_fn, x, sigma, diverged=_NonFiniteInput)
    check_score_shape("score_fn", score, x)
    return score


def _diverged(step: int, what: str) -> ValueError:
    return ValueError(f"{what} diverged: samples became NaN or infinite by step {step}; "
                      "use more steps (or, for the corrector, a smaller snr)")


def _check_finite(x: torch.Tensor, step: int, what: str) -> None:
    if not torch.isfinite(x).all():
        raise _diverged(step, what)


class _StepCounter:
    """Around a sampler's loop (``with _StepCounter(what) as counter``, ``counter.step`` set at
    each step, from 1): a score_fn that refused non-finite samples (they are checked only every
    25 steps) becomes the divergence error, naming the step."""

    def __init__(self, what: str) -> None:
        self.what, self.step = what, 0

    def __enter__(self) -> _StepCounter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, _NonFiniteInput):
            raise _diverged(self.step, self.what) from error.__cause__


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class ScoreCounter:
    """A score function that counts its calls: ``counter = ScoreCounter(score_fn)``.

    ``counter(x, sigma)`` returns ``score_fn(x, sigma)``; ``counter.calls`` is the number of
    calls so far (one evaluation of the whole batch each), the currency in which samplers
    are compared.
    """

    def __init__(self, score_fn) -> None:
        _check_score_fn(score_fn)
        self.score_fn = score_fn
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self.calls += 1
        return self.score_fn(x, sigma)


class _Frames:
    """Keeps x at the start and after every ``every``-th step (returned as (n_frames, N, *D))."""

    def __init__(self, x: torch.Tensor, every: int) -> None:
        self.every = check_positive_int("record_every", every)
        self.frames = [x.detach().clone()]

    def add(self, step: int, x: torch.Tensor, last: bool) -> None:
        if step % self.every == 0 or last:
            self.frames.append(x.detach().clone())

    def stack(self) -> torch.Tensor:
        return torch.stack(self.frames)


def _start(x_T, generator) -> torch.Tensor:
    x_T = check_batch("x_T", x_T)
    check_generator(generator, x_T.device)
    return x_T.detach().clone()


def _after_step(x: torch.Tensor, step: int, n_steps: int, frames: _Frames | None,
                what: str) -> None:
    """After step ``step`` (from 1): check x is finite every 25 steps and at the last; record it."""
    if step % 25 == 0 or step == n_steps:
        _check_finite(x, step, what)
    if frames is not None:
        frames.add(step, x, step == n_steps)


@torch.no_grad()
def euler_maruyama(
    score_fn,
    sde: VESDE,
    x_T: torch.Tensor,
    n_steps: int,
    *,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    record_every: int = 1,
    progress: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Solve the reverse-time SDE (Song et al. 2021, Eq. 6) by Euler-Maruyama, from t = 1 to 0.

    For the VE SDE the drift is :math:`-g(t)^2 s(x, \sigma(t))` and one step of length
    :math:`\Delta t = 1 / n` backwards in time is

    .. math:: x \leftarrow x + g(t)^2 \Delta t\, s(x, \sigma(t)) + g(t) \sqrt{\Delta t}\, z,
              \qquad z \sim N(0, I).

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, sigma) -> (N, *D)``, the score of the data perturbed at ``sigma``.
    sde : VESDE
    x_T : Tensor, shape (N, *D)
        Samples at t = 1 (from the prior ``sde.prior_sample`` or from the true p_1); named
        after Song et al., whose time runs to T (here T = 1, not the steps per level).
    n_steps : int
        Steps, one score evaluation each.
    generator : torch.Generator, optional
    return_trajectory : bool
        Also return the states (n_frames, N, *D): the start, every ``record_every``-th step
        and the last step.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Tensor or tuple of Tensor
        Samples (N, *D) at t = 0 (the data perturbed at sigma_min); with
        ``return_trajectory``, also the trajectory.
    """
    _check_score_fn(score_fn)
    sde = _check_sde(sde)
    x = _start(x_T, generator)
    times = sde.time_grid(n_steps).tolist()
    frames = _Frames(x, record_every) if return_trajectory else None
    with _StepCounter("euler_maruyama") as counter:
        for i in tqdm(range(n_steps), disable=not progress, desc="Euler-Maruyama", leave=False):
            counter.step = i + 1
            t, dt = times[i], times[i] - times[i + 1]
            g2 = sde.g2(t)
            score = _score(score_fn, x, sde.sigma(t))
            x = x + (g2 * dt) * score + math.sqrt(g2 * dt) * randn_like(x, generator=generator)
            _after_step(x, i + 1, n_steps, frames, "euler_maruyama")
    return (x, frames.stack()) if frames is not None else x


def corrector_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float) -> float:
    r"""The Langevin corrector's step from the signal-to-noise ratio (Song et al. 2021, Alg. 4).

    In the course's convention :math:`x \leftarrow x + \tfrac{\alpha}{2} s + \sqrt{\alpha} z`,
    the ratio of the drift's size to the noise's, :math:`r = \tfrac{\alpha}{2}\|s\| /
    (\sqrt{\alpha}\|z\|)`, is fixed at ``snr`` by

    .. math:: \alpha = \left( \frac{2 r \|z\|}{\|s\|} \right)^2 ,

    the paper's :math:`\epsilon = 2 (r \|z\| / \|s\|)^2` written for :math:`\alpha = 2\epsilon`.
    As in the authors' code, the norms are averaged over the batch (per-example norms give
    huge steps to the points where the score vanishes).

    ``score`` and ``noise`` are finite floating tensors of one shape (N, *D); ``snr`` is a
    positive finite float. A score that is zero everywhere has no step (a ValueError).
    """
    score, noise = check_batch("score", score), check_batch("noise", noise)
    if noise.shape != score.shape:
        raise ValueError(f"noise must have the score's shape {tuple(score.shape)}, "
                         f"got {tuple(noise.shape)}")
    return _step_size(score, noise, check_positive_real("snr", snr), "score")


def _step_size(score: torch.Tensor, noise: torch.Tensor, snr: float, what: str) -> float:
    """:func:`corrector_step_size` without the checks of its arguments; ``what`` names the
    score in the error raised when it is zero everywhere (its norm is then 0)."""
    norms = torch.stack([score.reshape(score.shape[0], -1).norm(dim=1).mean(),
                         noise.reshape(noise.shape[0], -1).norm(dim=1).mean()])
    score_norm, noise_norm = norms.tolist()
    if score_norm == 0.0:
        raise ValueError(f"{what} is zero everywhere, the corrector's step "
                         "(2 snr ||z|| / ||s||)^2 is undefined")
    ratio = 2.0 * snr * noise_norm / score_norm
    return ratio * ratio  # NaN or infinity for a non-finite score: the sampler reports it


def _check_n_corrector(n_corrector) -> int:
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"n_corrector must be a non-negative integer, got {n_corrector!r}")
    return n_corrector


def _reverse_diffusion_step(score_fn, x: torch.Tensor, sigma: float, sigma_next: float,
                            generator: torch.Generator | None) -> torch.Tensor:
    """Reverse diffusion (Song et al. 2021, Appendix E), the ladder's chain (Eq. 8) run backwards:
    x + (sigma^2 - sigma_next^2) s(x, sigma) + sqrt(sigma^2 - sigma_next^2) z."""
    variance = sigma**2 - sigma_next**2
    score = _score(score_fn, x, sigma)
    return x + variance * score + math.sqrt(variance) * randn_like(x, generator=generator)


def _langevin_corrector(score_fn, x: torch.Tensor, sigma: float, snr: float, n_steps: int,
                        generator: torch.Generator | None) -> torch.Tensor:
    """``n_steps`` Langevin steps x + alpha/2 s(x, sigma) + sqrt(alpha) z at one level, each with
    alpha set by the signal-to-noise ratio ``snr`` (:func:`corrector_step_size`)."""
    for _ in range(n_steps):
        score = _score(score_fn, x, sigma)
        noise = randn_like(x, generator=generator)
        alpha = _step_size(score, noise, snr, f"the score that score_fn returned at sigma = "
                                               f"{sigma:.6g}")
        x = x + (0.5 * alpha) * score + math.sqrt(alpha) * noise
    return x


@torch.no_grad()
def predictor_corrector(
    score_fn,
    sde: VESDE,
    x_T: torch.Tensor,
    n_steps: int,
    *,
    snr: float,
    n_corrector: int = 1,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    record_every: int = 1,
    progress: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Predictor-corrector sampling of the VE SDE (Song et al. 2021, Section 4.2 and Alg. 2).

    On the levels :math:`\sigma_i = \sigma(t_i)` of ``sde.time_grid(n_steps)``, each step is

    - the **reverse-diffusion predictor** (Song et al. 2021, Appendix E), the reverse of the
      ladder's Markov chain (Eq. 8):
      :math:`x \leftarrow x + (\sigma_i^2 - \sigma_{i+1}^2)\, s(x, \sigma_i) +
      \sqrt{\sigma_i^2 - \sigma_{i+1}^2}\, z`;
    - then ``n_corrector`` **Langevin corrector** steps at :math:`\sigma_{i+1}`,
      :math:`x \leftarrow x + \tfrac{\alpha}{2} s(x, \sigma_{i+1}) + \sqrt{\alpha}\, z`, with
      :math:`\alpha` set by the signal-to-noise ratio ``snr`` (:func:`corrector_step_size`).

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, sigma) -> (N, *D)``.
    sde : VESDE
    x_T : Tensor, shape (N, *D)
        Samples at t = 1.
    n_steps : int
        Predictor steps; the sampler makes ``n_steps * (1 + n_corrector)`` score evaluations.
    snr : float
        The corrector's signal-to-noise ratio r > 0 (Song et al. use 0.16 on CIFAR-10 images,
        as chapter 8 does on the 2-D mixture; exercise 8.3 measures what r does).
    n_corrector : int
        Corrector steps after each predictor step (0: the predictor alone).
    generator : torch.Generator, optional
    return_trajectory, record_every, progress
        As in :func:`euler_maruyama` (one frame per predictor step).

    Returns
    -------
    Tensor (N, *D); with ``return_trajectory``, also the trajectory.
    """
    _check_score_fn(score_fn)
    sde = _check_sde(sde)
    snr = check_positive_real("snr", snr)
    n_corrector = _check_n_corrector(n_corrector)
    x = _start(x_T, generator)
    sigmas = [sde.sigma(t) for t in sde.time_grid(n_steps).tolist()]
    frames = _Frames(x, record_every) if return_trajectory else None
    with _StepCounter("predictor_corrector") as counter:
        for i in tqdm(range(n_steps), disable=not progress, desc="predictor-corrector",
                      leave=False):
            counter.step = i + 1
            x = _reverse_diffusion_step(score_fn, x, sigmas[i], sigmas[i + 1], generator)
            x = _langevin_corrector(score_fn, x, sigmas[i + 1], snr, n_corrector, generator)
            _after_step(x, i + 1, n_steps, frames, "predictor_corrector")
    return (x, frames.stack()) if frames is not None else x


# ---------------------------------------------------------------------------------------------
# The probability-flow ODE
# ---------------------------------------------------------------------------------------------


def _ode_drift(score_fn, sde: VESDE, x: torch.Tensor, t: float) -> torch.Tensor:
    """The probability-flow drift -1/2 g(t)^2 s(x, sigma(t)) (Song et al. 2021, Eq. 13).

    A non-finite score raises (the solver would otherwise shrink its step without end).
    """
    sigma = sde.sigma(t)
    try:
        score = _score(score_fn, x, sigma)
    except _NonFiniteInput as error:
        raise ValueError(f"the ODE's state overflowed to NaN or infinity by t = {t:.6g}: "
                         "score_fn's values are too large in x's dtype") from error.__cause__
    if not bool(torch.isfinite(score).all()):
        raise ValueError(f"score_fn returned non-finite values (NaN or infinity) at "
                         f"t = {t:.6g}, sigma = {sigma:.6g}")
    return (-0.5 * sde.g2(t)) * score


def _solver_time(t) -> float:
    """The solver's time as a float, clamped to [0, 1] against rounding. (A NaN time, which
    only a non-finite right-hand side could cause, never gets here: :func:`_check_rhs` and
    :func:`_ode_drift` raise first.)"""
    return min(max(float(t), 0.0), 1.0)


def _check_rhs(out: np.ndarray, t: float, what: str) -> np.ndarray:
    """Raise, naming score_fn, unless the right-hand side ``out`` is finite (it may overflow)."""
    if not np.isfinite(out).all():
        raise ValueError(f"{what} is NaN or infinite at t = {t:.6g}: score_fn's values are "
                         "too large (or its derivative is not finite) in x's dtype")
    return out


def _flat64(x: torch.Tensor) -> np.ndarray:
    """``x`` as the solver's flat float64 NumPy state (on the CPU)."""
    return x.reshape(-1).double().cpu().numpy()


def _from_numpy(y: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """The solver's float64 array ``y`` as a tensor of ``like``'s dtype and device."""
    return torch.from_numpy(y).to(dtype=like.dtype, device=like.device)


def _solve(rhs, y0: np.ndarray, t_span, *, rtol, atol, method, t_eval=None):
    """SciPy's solve_ivp on a flat float64 state; a failure raises with the solver's message."""
    from scipy.integrate import solve_ivp

    solution = solve_ivp(rhs, t_span, y0, method=method, rtol=rtol, atol=atol, t_eval=t_eval)
    if not solution.success:
        raise RuntimeError(f"the ODE solver failed: {solution.message}")
    return solution


def _check_tolerances(rtol, atol, method) -> tuple[float, float, str]:
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    if not isinstance(method, str):
        raise ValueError("method must be the name of a solve_ivp method, e.g. 'RK45', "
                         f"got {method!r}")
    return rtol, atol, method


def _frame_times(t_span: tuple[float, float], n_frames) -> np.ndarray:
    """``n_frames`` (at least 2) equally spaced times over ``t_span``, for the trajectory."""
    n_frames = check_positive_int("n_frames", n_frames)
    return np.linspace(*t_span, max(n_frames, 2))


def _flow_rhs(score_fn, sde: VESDE, x: torch.Tensor):
    """``rhs(t, y)`` for solve_ivp: the drift of Eq. 13 at the flat state y, taken in x's dtype."""

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        t = _solver_time(t)
        state = _from_numpy(y, x).reshape(x.shape)
        with torch.no_grad():
            drift = _ode_drift(score_fn, sde, state, t)
        return _check_rhs(_flat64(drift), t, "the drift -g(t)^2 score_fn(x, sigma(t)) / 2")

    return rhs


def probability_flow(
    score_fn,
    sde: VESDE,
    x: torch.Tensor,
    *,
    direction: str = "backward",
    rtol: float = 1e-5, atol: float = 1e-5, method: str = "RK45",
    return_trajectory: bool = False,
    n_frames: int = 41,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Solve the probability-flow ODE (Song et al. 2021, Eq. 13) with SciPy's ``solve_ivp``.

    For the VE SDE, :math:`\frac{dx}{dt} = -\tfrac12 g(t)^2 s(x, \sigma(t))
    = -\sigma(t)^2 \log\frac{\sigma_{\max}}{\sigma_{\min}}\, s(x, \sigma(t))`: a deterministic
    map between the data (t = 0) and :math:`p_1` (t = 1), which the prior
    :math:`N(0, \sigma_{\max}^2 I)` approximates, whose marginals are those of the SDE.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, sigma) -> (N, *D)``, evaluated in x's dtype.
    sde : VESDE
    x : Tensor, shape (N, *D)
        The start: samples at t = 1 for ``direction="backward"`` (sampling, prior to data),
        data at t = 0 for ``"forward"`` (encoding, data to prior).
    rtol, atol : float
        The solver's tolerances (Song et al.'s likelihood code uses 1e-5).
    method : str
        A ``solve_ivp`` method ("RK45", "DOP853", ...).
    return_trajectory : bool
        Also return the states at ``n_frames`` equally spaced times, shape (n_frames, N, *D).

    Returns
    -------
    Tensor or tuple of Tensor
        The states (N, *D) at the other end; with ``return_trajectory``, also the
        trajectory. The batch is one ODE system: the solver's steps are shared, and its error
        is measured as the root mean square over the batch.
    """
    _check_score_fn(score_fn)
    sde = _check_sde(sde)
    x = check_batch("x", x).detach()
    _check_choice("direction", direction, DIRECTIONS)
    rtol, atol, method = _check_tolerances(rtol, atol, method)
    t_span = (1.0, 0.0) if direction == "backward" else (0.0, 1.0)
    t_eval = _frame_times(t_span, n_frames) if return_trajectory else None
    solution = _solve(_flow_rhs(score_fn, sde, x), _flat64(x), t_span, rtol=rtol, atol=atol,
                      method=method, t_eval=t_eval)
    end = _from_numpy(solution.y[:, -1], x).reshape(x.shape)
    if not return_trajectory:
        return end
    return end, _from_numpy(solution.y.T.copy(), x).reshape(-1, *x.shape)


def _divergence(drift: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """div_x drift (N,): exact (one backward pass a dimension) or Hutchinson's mean over probes."""
    if not drift.requires_grad:
        raise ValueError("score_fn must be differentiable in x for the divergence: do not detach "
                         "its result or compute it under torch.no_grad()")
    flat = drift.reshape(drift.shape[0], -1)  # (N, D)
    if probes is None:
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i in range(flat.shape[1]):
            # Summing over the batch is safe: example n's drift depends on x_n only.
            (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
            total = total + row.reshape(x.shape[0], -1)[:, i]
        return total
    estimates = []
    for probe in probes:  # (N, *D) each, fixed along the whole trajectory
        (vjp,) = torch.autograd.grad((drift * probe).sum(), x, retain_graph=True)
        estimates.append(sum_except_batch(vjp * probe))  # v^T (d drift / dx) v
    return torch.stack(estimates).mean(dim=0)


def _draw_probes(x: torch.Tensor, n_probes: int, probe: str,
                 generator: torch.Generator | None) -> torch.Tensor:
    v = randn_like(x, generator=generator, shape=(n_probes, *x.shape))
    return v.sign() if probe == "rademacher" else v  # (M, N, *D), E[v v^T] = I


def _check_divergence(divergence, n_probes, probe) -> int:
    """Check the divergence estimator's settings; ``n_probes`` as an int."""
    _check_choice("divergence", divergence, DIVERGENCES)
    n_probes = check_positive_int("n_probes", n_probes)
    _check_choice("probe", probe, PROBES)
    return n_probes


def _check_prior(prior_log_prob, sde: VESDE) -> Callable[[torch.Tensor], torch.Tensor]:
    """The prior's log-density: ``prior_log_prob``, or the SDE's N(0, sigma_max^2 I) when None."""
    if prior_log_prob is None:
        return sde.prior_log_prob
    if not callable(prior_log_prob):
        raise ValueError("prior_log_prob must be a callable x -> (N,), "
                         f"got {type(prior_log_prob).__name__}")
    return prior_log_prob


def _flow_and_divergence(
    score_fn, sde: VESDE, x: torch.Tensor, probes: torch.Tensor | None, *, rtol: float,
    atol: float, method: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x(1) (N, *D) and the integral of div f over [0, 1] (N,), both float64 on the CPU: Eq. 13
    solved forward from x(0) = ``x`` together with the divergence's integral."""
    n, size = x.shape[0], x[0].numel()

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        t = _solver_time(t)
        state = _from_numpy(y[: n * size], x).reshape(x.shape)
        with torch.enable_grad():
            state.requires_grad_(True)
            drift = _ode_drift(score_fn, sde, state, t)
            div = _divergence(drift, state, probes)
        out = torch.cat([drift.detach().reshape(-1), div.detach()])
        return _check_rhs(out.double().cpu().numpy(), t,
                          "the drift of score_fn, or its divergence,")

    y0 = np.concatenate([_flat64(x), np.zeros(n)])
    solution = _solve(rhs, y0, (0.0, 1.0), rtol=rtol, atol=atol, method=method)
    end = torch.from_numpy(solution.y[: n * size, -1]).reshape(x.shape)
    return end, torch.from_numpy(solution.y[n * size:, -1])


def _prior_at(prior, end: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p_1(x(1)) (N,) in float64 on the CPU, the prior called in x's dtype and device."""
    n = x.shape[0]
    log_p1 = prior(end.to(dtype=x.dtype, device=x.device)).detach().double().cpu()
    if log_p1.shape != (n,):
        raise ValueError(f"prior_log_prob must return shape ({n},), got {tuple(log_p1.shape)}")
    if bool((torch.isnan(log_p1) | (log_p1 == math.inf)).any()):
        raise ValueError("prior_log_prob returned NaN or +infinity: a log-density must be "
                         "finite (or -infinity where the density is 0)")
    return log_p1


def log_likelihood(
    score_fn,
    sde: VESDE,
    x: torch.Tensor,
    *,
    divergence: str = "exact", n_probes: int = 1, probe: str = "rademacher",
    generator: torch.Generator | None = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rtol: float = 1e-5, atol: float = 1e-5, method: str = "RK45",
) -> torch.Tensor:
    r"""Log-density of ``x`` under the model, in nats per example, by the probability-flow ODE.

    The ODE :math:`dx/dt = \tilde f(x, t) = -\tfrac12 g(t)^2 s(x, \sigma(t))` (Song et al.
    2021, Eq. 13) is a continuous normalising flow; by the instantaneous change of variables
    (Chen et al. 2018, Theorem 1; Song et al. 2021, Appendix D.2, Eq. 39)

    .. math:: \log p_0(x(0)) = \log p_1(x(1)) + \int_0^1 \nabla_x \cdot \tilde f(x(t), t)\, dt,

    solved forward from t = 0 together with the integral. The divergence is ``"exact"`` (one
    backward pass per dimension, any D) or ``"hutchinson"``: :math:`\E_v[v^\top (\partial
    \tilde f / \partial x) v]` with ``n_probes`` Rademacher (or Gaussian) probes drawn once and
    kept along the trajectory (Hutchinson 1989; Grathwohl et al. 2019), unbiased.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, sigma) -> (N, *D)``, differentiable in x (no ``torch.no_grad`` inside).
    sde : VESDE
    x : Tensor, shape (N, *D)
        The points, as data at t = 0 (their density is that of the data perturbed at sigma_min).
    divergence : {"exact", "hutchinson"}
    n_probes : int
        Hutchinson probes per example (>= 1).
    probe : {"rademacher", "gaussian"}
        The probes' law (both have E[v v^T] = I).
    generator : torch.Generator, optional
        Source of the probes.
    prior_log_prob : callable, optional
        ``log p_1(x(1))`` (N,); the prior N(0, sigma_max^2 I) when omitted. Pass the true
        marginal's log-density to separate the prior's error from the solver's.
    rtol, atol, method
        As in :func:`probability_flow`.

    Returns
    -------
    Tensor, shape (N,)
        log p(x) in nats; -log p(x) / (D log 2) is bits per dimension (see
        :func:`scorelab.metrics.bits_per_dim` for dequantised data).
    """
    _check_score_fn(score_fn)
    sde = _check_sde(sde)
    x = check_batch("x", x).detach()
    n_probes = _check_divergence(divergence, n_probes, probe)
    check_generator(generator, x.device)
    prior = _check_prior(prior_log_prob, sde)
    rtol, atol, method = _check_tolerances(rtol, atol, method)
    probes = _draw_probes(x, n_probes, probe, generator) if divergence == "hutchinson" else None
    end, integral = _flow_and_divergence(score_fn, sde, x, probes, rtol=rtol, atol=atol,
                                         method=method)
    return (_prior_at(prior, end, x) + integral).to(dtype=x.dtype, device=x.device)


# ---------------------------------------------------------------------------------------------
# Learning the score at every noise level: denoising score matching over continuous sigma
# ---------------------------------------------------------------------------------------------


def continuous_dsm_loss(model, x: torch.Tensor, sde: VESDE, *,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Per-example denoising score matching over continuous noise (Song et al. 2021, Eq. 7).

    For each example a time :math:`t \sim U(0, 1)` gives a log-uniform noise level
    :math:`\sigma = \sigma(t)` between sigma_min and sigma_max; the example is perturbed as
    :math:`\tilde x = x + \sigma z` and, with the weighting :math:`\lambda = \sigma^2` (for
    the VE SDE proportional to :math:`g(t)^2`),

    .. math:: \ell = \tfrac12 \sigma^2 \| s(\tilde x, \sigma) + z / \sigma \|^2
                   = \tfrac12 \| \sigma\, s(\tilde x, \sigma) + z \|^2 .

    Eq. 7 has no factor 1/2 (a constant, kept here as in chapters 4 and 6). Its kernel for
    this VE SDE is :math:`N(x, \sigma(t)^2 I)`, as here, in the discrete ladder and in the
    authors' code (Song et al. 2021, Appendix C, which lets the data sit at :math:`t = 0`
    unperturbed and starts the ladder at :math:`\sigma(0^+) = \sigma_{\min}`). That lambda is
    proportional to :math:`g(t)^2` makes it the likelihood weighting of Song, Durkan, Murray
    & Ermon (2021).

    Parameters
    ----------
    model : callable
        ``model(x, sigma) -> (N, *D)`` with ``sigma`` a tensor (N,): a sigma-conditioned
        network (see :mod:`scorelab.nets_continuous`).
    x : Tensor, shape (N, *D)
        Clean data.
    sde : VESDE
        Supplies sigma_min and sigma_max.
    generator : torch.Generator, optional
        Source of the times and the noise (on the CPU or on x's device).

    Returns
    -------
    Tensor, shape (N,)
    """
    check_callable("model", model, "model(x, sigma)")
    x = check_batch("x", x)
    check_generator(generator, x.device)
    return _continuous_dsm_loss(model, x, _check_sde(sde), generator)


def _continuous_dsm_loss(model, x, sde: VESDE, generator) -> torch.Tensor:
    """:func:`continuous_dsm_loss` on checked arguments (no host sync: the training step)."""
    t = rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)  # (N,)
    sigma = sde._sigma(t)  # (N,), log-uniform; t in [0, 1) needs no check
    noise = randn_like(x, generator=generator)
    return _sigma_weighted_dsm(lambda noisy: model(noisy, sigma), x, sigma, noise)


class ContinuousDenoisingScoreMatching(ScoreMatchingTrainer):
    """Train a sigma-conditioned score model by :func:`continuous_dsm_loss` (the VE SDE's loss).

    Parameters
    ----------
    model : nn.Module
        ``model(x, sigma) -> score`` with sigma a tensor (N,).
    sde : VESDE
        The range of noise levels.
    lr : float
        Adam learning rate.
    """

    def __init__(self, model: torch.nn.Module, sde: VESDE, *, lr: float = 1e-3) -> None:
        self.sde = _check_sde(sde)
        super().__init__(model, lr=lr)

    def per_example_loss(self, x, generator=None):
        return _continuous_dsm_loss(self.forward, x, self.sde, generator)
